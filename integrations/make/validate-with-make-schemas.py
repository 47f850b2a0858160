"""Validates this Make app against the JSON schemas of the Make Apps Editor for VS Code.

The schemas ship inside the editor (repository integromat/vscode-apps-sdk, folders
syntaxes/imljson/schemas and syntaxes/local-development/schemas); its package.json says which
schema applies to which file name (`contributes.jsonValidation`). Give the path of a checkout:

    python3 validate-with-make-schemas.py /path/to/vscode-apps-sdk

Needs the `jsonschema` package. Exits non-zero, listing each file and error, if any file fails.
Files the editor has no schema for (the README) are skipped.
"""

import fnmatch
import json
import pathlib
import sys

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7


def main(sdk: pathlib.Path) -> int:
    app = pathlib.Path(__file__).resolve().parent
    contributes = json.loads((sdk / "package.json").read_text())["contributes"]["jsonValidation"]
    schema_dir = sdk / "syntaxes" / "imljson" / "schemas"
    resources = []
    for path in schema_dir.glob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((path.name, Resource.from_contents(schema, default_specification=DRAFT7)))
    registry = Registry().with_resources(resources)
    manifest = json.loads((app / "makecomapp.json").read_text())
    files = ["makecomapp.json"]
    files += [f for f in manifest["generalCodeFiles"].values() if f and f.endswith(".json")]
    for kind in manifest["components"].values():
        for component in kind.values():
            files += [f for f in component["codeFiles"].values() if f]
    failures = 0
    for name in files:
        rule = next((r for r in contributes if any(fnmatch.fnmatch(pathlib.Path(name).name, p) for p in r["fileMatch"])), None)
        if rule is None:
            print(f"skip   {name} (no schema)")
            continue
        schema_path = (sdk / rule["url"]).resolve()
        schema = json.loads(schema_path.read_text())
        validator = Draft7Validator(schema, registry=registry)
        errors = list(validator.iter_errors(json.loads((app / name).read_text())))
        print(f"{'ok  ' if not errors else 'FAIL'}   {name}  ({schema_path.name})")
        for error in errors:
            failures += 1
            print(f"         {'/'.join(map(str, error.absolute_path))}: {error.message}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1])))
