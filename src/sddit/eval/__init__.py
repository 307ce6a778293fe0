"""Sample quality: the Inception network (`inception.py`), the metrics on its features
(`metrics.py`), scoring a trained generator against its dataset (`generator.py`), and scoring image
files against a reference the way ADM's evaluator does (`files.py`)."""

from .files import ImageSet, Reference, default_ref_cache_path, evaluate_sample_files
from .generator import evaluate_generator, reference_stats
from .inception import (
    InceptionFeatures,
    find_inception_weights,
    inception_logit_weight,
    load_inception,
    preprocess_images,
)
from .metrics import (
    compute_fid,
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    load_stats,
    precision_recall,
    save_stats,
)

__all__ = [
    "ImageSet",
    "Reference",
    "default_ref_cache_path",
    "evaluate_sample_files",
    "evaluate_generator",
    "reference_stats",
    "InceptionFeatures",
    "find_inception_weights",
    "inception_logit_weight",
    "load_inception",
    "preprocess_images",
    "compute_fid",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "inception_score",
    "load_stats",
    "precision_recall",
    "save_stats",
]
