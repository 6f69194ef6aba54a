"""The model registry: the promotion rule (`rule`), the pyfunc a version serves (`pyfunc`), lineage tags
(`lineage`), and registering and promoting versions in MLflow (`mlflow_registry`)."""
