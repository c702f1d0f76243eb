import os
import sys

# Lets tests import the shared helpers in this folder (reference_forward, dist_utils, ...).
sys.path.insert(0, os.path.dirname(__file__))
