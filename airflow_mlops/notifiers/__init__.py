"""Notifiers: a Slack incoming-webhook notifier and the dispatch of run events to notifiers."""
