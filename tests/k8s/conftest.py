"""Session fixtures of the Kubernetes tier: every overlay/component combination rendered once."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.k8s.manifests import Combo, Render, combo_dir, prepare_tree, render, valid_combinations


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory):
    """A rendering copy of k8s/ (overlays get their secret files from the committed examples)."""
    return prepare_tree(tmp_path_factory.mktemp("k8s-render"))


@pytest.fixture(scope="session")
def renders(k8s_tree) -> dict[Combo, Render]:
    """Every valid overlay + components combination, rendered with `kubectl kustomize`."""
    combos = valid_combinations()
    directories = [combo_dir(k8s_tree, combo) for combo in combos]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda item: render(item[1], item[0].id), zip(combos, directories, strict=True)))
    return dict(zip(combos, results, strict=True))


@pytest.fixture(scope="session")
def committed(renders) -> dict[str, Render]:
    """The overlays exactly as committed, by name."""
    return {combo.overlay: rendered for combo, rendered in renders.items() if combo.components is None}
