import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(int(os.environ.get("IMPLICITGRAD_TEST_THREADS", "1")))

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")
