"""Extra links from task instances to MLflow pages."""
