"""Render and lint a Helm chart with Helm's own Go SDK (helm-python-sdk), as a subprocess.

Run with the interpreter of the helm virtualenv ($(VENV)/helm, requirements/k8s-helm.txt),
never the app's: tests/k8s/helm_chart.py calls it. It reads one JSON request on stdin and
prints one JSON answer, using nothing but the standard library and helm_python:

    {"chart": "<dir>", "renders": [{"id", "values", "name", "namespace"}],
     "lints": [{"id", "values", "namespace"}]}
 -> {"sdk": "v4.2.3", "renders": {id: {"manifests": {template: text}} | {"error": str}},
     "lints": {id: report}}

Values arrive already merged (the caller layers values files as `helm -f a -f b` does);
the chart's defaults and values.schema.json are Helm's to apply, as at install time.
"""

import json
import sys

import helm_python


def main() -> None:
    request = json.load(sys.stdin)
    answer = {"sdk": helm_python.helm_sdk_version(), "renders": {}, "lints": {}}
    with helm_python.Chart.load(request["chart"]) as chart:
        for item in request.get("renders", []):
            try:
                manifests = chart.render(
                    item["values"], name=item["name"], namespace=item["namespace"], is_install=True
                )
            except helm_python.HelmError as error:
                answer["renders"][item["id"]] = {"error": f"{type(error).__name__}: {error}"}
            else:
                answer["renders"][item["id"]] = {"manifests": manifests}
    for item in request.get("lints", []):
        answer["lints"][item["id"]] = helm_python.lint(
            request["chart"], item["values"], strict=True, namespace=item.get("namespace")
        )
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
