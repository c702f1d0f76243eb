import os
import sys

import pytest
import torch

# Lets tests import the shared helpers in this folder (reference_forward, dist_utils, ...).
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def one_thread():
    """Micro models and per-sample augmentation on a shared 2-core CPU: one intra-op thread avoids
    oversubscription stalls (loader workers run single-threaded too). Use with `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
