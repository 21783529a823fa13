"""Test session set-up: torchvision made importable beside a CPU build of torch before any test (or
transformers, which imports it wherever it is installed) imports it; see pretrained.load_torchvision."""

from pretrained import load_torchvision

load_torchvision()
