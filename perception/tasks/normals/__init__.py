"""Surface normals: a dense branch predicting unit vectors, cosine or L1 loss, angular-error metrics."""
from perception.tasks.normals.config import NormalsConfig
from perception.tasks.normals.head import NormalsHead
from perception.tasks.normals.task import NormalsTask

__all__ = ["NormalsConfig", "NormalsHead", "NormalsTask"]
