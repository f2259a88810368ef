"""MLflow "models from code" entry of the registered classifier: loading the model runs this file."""
import mlflow

from components.model.classifier import ClassifierModel

mlflow.models.set_model(ClassifierModel())
