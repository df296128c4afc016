"""Package discovery only; metadata lives in pyproject.toml.

`services/` and `trainer/` sit at the top of the repository (one folder per service, easy to find) but
install inside the `lema` namespace (`lema.services.verifier`, `lema.trainer`), so nothing as generic as
`services` lands in site-packages.
"""

from setuptools import find_packages, setup

ROOTS = {"lema": "lema", "lema.services": "services", "lema.trainer": "trainer"}

packages = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=ROOTS, include_package_data=True)
