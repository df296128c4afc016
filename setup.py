"""The package list for setuptools (everything else is in pyproject.toml): `lema` and its subpackages, and the
root folders services/ and trainer/ as `lema.services` and `lema.trainer` (pyproject's package-dir maps the
folders; pyproject alone cannot prefix the packages found in them)."""

from setuptools import find_packages, setup

MAPPED = ("services", "trainer")  # root folders installed inside the `lema` namespace

packages = find_packages(include=["lema", "lema.*"])
for folder in MAPPED:
    packages += [f"lema.{name}" for name in find_packages(include=[folder, f"{folder}.*"])]

setup(packages=packages)
