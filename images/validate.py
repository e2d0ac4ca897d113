#!/usr/bin/env python3
"""Check the Marathon and Ochothon definitions under images/marathon/.

    python3 images/validate.py [SCHEMA] [--namespace ci] [--self-test]

1. Every images/marathon/*/marathon.json must validate against Marathon's
   AppDefinition JSON Schema, as draft-04 (the schema declares no usable
   draft; Marathon itself validated it as draft-04: see SOURCES.md).
2. Every images/marathon/*/marathon.yml must follow the Ochothon container
   definition format (tests/fixtures/marathon/ochothon/FORMAT.md): a mapping
   with `cluster` and `image` strings, `ports` items in the tool's syntax,
   `settings` and `verbatim` mappings. The Marathon app the `deploy` tool
   would POST for it is rebuilt following FORMAT.md and must validate too.
3. What this project needs from them: the hook on TCP 5000 with a /ping
   health check and a blank HOOK_TOKEN; the slaves' blank GIT_CREDENTIALS and
   the Docker socket; Redis on 6379; image tags equal to the crate version;
   Redis locked: the agent's password file /etc/ci-backend/redis.pass mounted
   read-only at /run/ci-redis/password in Redis, the hooks and the slaves,
   whose REDIS_PASSWORD_FILE names it, and no password in any env or URL.

SCHEMA defaults to ../shared/data/marathon/AppDefinition.schema.json when
that exists, else to tests/fixtures/marathon/AppDefinition.schema.json (an
unmodified copy, so that a clone without ../shared works).

--self-test also checks the validator against the seed's own files in
tests/fixtures/marathon (examples/*.json, ochothon/*/marathon.yml), whose
expected results are recorded in tests/fixtures/marathon/SOURCES.md.

Exit status: 0 when everything passes, 1 when a definition is wrong, 2 when
the tool itself cannot run (missing schema, missing Python packages).
"""

import argparse
import copy
import datetime
import glob
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_SCHEMA = os.path.join(ROOT, "..", "shared", "data", "marathon", "AppDefinition.schema.json")
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "marathon")
FIXTURE_SCHEMA = os.path.join(FIXTURES, "AppDefinition.schema.json")
# git blob id of Marathon's AppDefinition.json (v1.6.352 .. v1.7.236).
SCHEMA_BLOB = "b30da3f7065071dbefb6dd8e69411933fa4dfa92"

TOP_LEVEL = {"cluster", "image", "debug", "start", "ports", "settings", "verbatim"}
PORT_RE = re.compile(r"^(\d+)(?: (\d+|\*))?(?: (tcp|udp))?$")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def need(module, package):
    """Import a module, installing its PyPI package with pip only if missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    print(f"validate: python module {module!r} missing; pip install {package}", file=sys.stderr)
    for extra in ([], ["--user"]):
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", *extra, package]
        if subprocess.run(cmd).returncode == 0:
            importlib.invalidate_caches()
            try:
                return importlib.import_module(module)
            except ImportError:
                continue
    sys.exit(f"validate: cannot install {package} with pip; install it by hand "
             f"(pip install {package}, or apt-get install python3-{package.lower()})")


class Report:
    def __init__(self):
        self.failed = 0

    def ok(self, what, note=""):
        print(f"ok    {what}{('  (' + note + ')') if note else ''}")

    def fail(self, what, problems):
        self.failed += 1
        print(f"FAIL  {what}")
        for p in problems:
            print(f"      - {p}")

    def warn(self, what, message):
        print(f"warn  {what}: {message}")


def rel(path):
    return os.path.relpath(path, os.getcwd())


def git_blob(path):
    data = open(path, "rb").read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def schema_errors(validator, document):
    """Draft-4 errors as `<json path>: <message>` lines, sorted by path."""
    out = []
    for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        message = e.message if len(e.message) <= 160 else (
            f"fails the schema's `{e.validator}` rule at {'/'.join(map(str, e.absolute_schema_path))}"
            f" ({e.message[:60]}...)")
        out.append(f"{where}: {message}")
    return out


# --- Ochothon's deploy tool, rebuilt from FORMAT.md ------------------------

def ocho_merge(left, right):
    """Ochopod's merge(): mappings recursively, lists concatenated, else right wins."""
    if not isinstance(right, dict):
        return copy.deepcopy(right)
    merged = copy.deepcopy(left)
    for k, v in right.items():
        if k in merged and isinstance(merged[k], dict):
            merged[k] = ocho_merge(merged[k], v)
        elif k in merged and isinstance(v, list) and isinstance(merged[k], list):
            merged[k] = merged[k] + copy.deepcopy(v)
        else:
            merged[k] = copy.deepcopy(v)
    return merged


def parse_port(item):
    """One `ports` item -> a portMappings entry, or raise ValueError."""
    if isinstance(item, bool):
        raise ValueError(f"invalid port syntax ({item!r})")
    if isinstance(item, int):
        text = str(item)
    elif isinstance(item, str):
        text = item
    else:
        raise ValueError(f"invalid port syntax ({item!r}): expected an integer or a string")
    m = PORT_RE.match(text)
    if not m:
        raise ValueError(f'invalid port syntax ("{text}"): expected N, "N M", "N *", '
                         f'optionally followed by " tcp" or " udp"')
    container = int(m.group(1))
    mapping = {"containerPort": container}
    if m.group(2) == "*":
        mapping["hostPort"] = container
    elif m.group(2):
        mapping["hostPort"] = int(m.group(2))
    for key in ("containerPort", "hostPort"):
        if key in mapping and not 0 < mapping[key] <= 65535:
            raise ValueError(f'port "{text}": {mapping[key]} is not a TCP/UDP port')
    mapping["protocol"] = m.group(3) or "tcp"
    return mapping


def null_settings(tree, prefix):
    missing = []
    for key, value in tree.items():
        if value is None:
            missing.append(f"{prefix}.{key}")
        elif isinstance(value, dict):
            missing += null_settings(value, f"{prefix}.{key}")
    return missing


def check_yaml_format(doc):
    """FORMAT.md's rules. Returns (problems, warnings)."""
    problems, warnings = [], []
    if not isinstance(doc, dict):
        return [f"the definition must be a YAML mapping, not {type(doc).__name__}"], warnings
    for key in ("cluster", "image"):
        if key not in doc:
            problems.append(f"`{key}` is required")
        elif not isinstance(doc[key], str) or not doc[key].strip():
            problems.append(f"`{key}` must be a non-empty string, not {doc[key]!r}")
    if isinstance(doc.get("cluster"), str) and not NAME_RE.match(doc["cluster"]):
        problems.append(f"`cluster` {doc['cluster']!r}: Marathon app ids allow only lower-case "
                        f"letters, digits, `-` and `.`")
    image = doc.get("image")
    if isinstance(image, str):
        if re.search(r"\s", image):
            problems.append(f"`image` {image!r} contains white space")
        elif ":" in image.split("/")[0] and "/" in image:
            warnings.append(f"`image` {image!r} names a registry port: `deploy -r TAG` would cut it "
                            f"at the first `:`")
    for key in ("debug", "start"):
        if key in doc and not isinstance(doc[key], bool):
            problems.append(f"`{key}` must be true or false, not {doc[key]!r}")
    if "ports" in doc:
        if not isinstance(doc["ports"], list):
            problems.append(f"`ports` must be a list, not {type(doc['ports']).__name__}")
        else:
            for item in doc["ports"]:
                try:
                    m = parse_port(item)
                    if m["containerPort"] == 8080:
                        warnings.append("port 8080 is always added by the deploy tool; listing it "
                                        "gives a duplicate mapping")
                except ValueError as e:
                    problems.append(str(e))
    for key in ("settings", "verbatim"):
        if key in doc and not isinstance(doc[key], dict):
            problems.append(f"`{key}` must be a mapping (key: value lines), not "
                            f"{'empty' if doc[key] is None else type(doc[key]).__name__}")
    if isinstance(doc.get("settings"), dict):
        missing = null_settings(doc["settings"], "pod")
        if missing:
            warnings.append("blank settings the deploy refuses unless an overrides file (-o) "
                            "supplies them: " + ", ".join(missing))
    unknown = sorted(set(doc) - TOP_LEVEL)
    if unknown:
        warnings.append(f"keys the deploy tool ignores: {', '.join(map(str, unknown))}")
    return problems, warnings


def ocho_app(doc, namespace="ci", pods=1, suffix=None, stamp=None):
    """The Marathon app JSON `deploy -n <namespace> -p <pods>` would POST."""
    defaults = {"start": True, "debug": False, "settings": {}, "ports": [8080], "verbatim": {}}
    cfg = ocho_merge(defaults, doc)
    cluster = cfg["cluster"] if not suffix else f"{cfg['cluster']}-{suffix}"
    stamp = stamp or datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    spec = {
        "id": f"ochopod.{namespace}.{cluster}-{stamp}",
        "instances": pods,
        "env": {
            "ochopod_cluster": cluster,
            "ochopod_debug": str(cfg["debug"]).lower(),
            "ochopod_start": str(cfg["start"]).lower(),
            "ochopod_namespace": namespace,
            "pod": json.dumps(cfg["settings"]),
        },
        "container": {
            "type": "DOCKER",
            "docker": {
                "forcePullImage": True,
                "image": cfg["image"],
                "network": "BRIDGE",
                "portMappings": [parse_port(p) for p in cfg["ports"]],
            },
            "volumes": [
                {"containerPath": "/etc/mesos", "hostPath": "/etc/mesos", "mode": "RO"},
                {"containerPath": "/opt/mesosphere", "hostPath": "/opt/mesosphere", "mode": "RO"},
            ],
        },
    }
    return ocho_merge(cfg["verbatim"], spec)


# --- what this project needs from its definitions ---------------------------

def crate_version():
    try:
        text = open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8").read()
    except OSError:
        return None
    m = re.search(r'(?ms)^\[package\].*?^version\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else None


def mappings(app):
    c = app.get("container") or {}
    return (c.get("docker") or {}).get("portMappings") or c.get("portMappings") or []


# Redis's password on a Marathon agent: one file per agent, mounted into each part
# (docs/deploying.md "Redis credentials").
PASSWORD_HOST = "/etc/ci-backend/redis.pass"
PASSWORD_FILE = "/run/ci-redis/password"


def project_checks(part, app, source):
    """Our own expectations for the app JSON (given or generated) of one part."""
    problems = []
    env = app.get("env") or {}
    image = ((app.get("container") or {}).get("docker") or {}).get("image", "")
    version = crate_version()
    if not image.startswith(f"ci-backend/{part}:"):
        problems.append(f"image {image!r}: expected ci-backend/{part}:<version>")
    elif version and image.split(":", 1)[1] != version:
        problems.append(f"image {image!r}: tag differs from the crate version {version} (Cargo.toml)")
    ports = mappings(app)
    if part in ("hook", "slave") and "REDIS_URL" not in env:
        problems.append("env REDIS_URL is missing")
    if part == "hook":
        index = next((i for i, m in enumerate(ports) if m.get("containerPort") == 5000), None)
        if index is None:
            problems.append("no port mapping for container port 5000")
        elif ports[index].get("hostPort") != 5000:
            problems.append("container port 5000 must be published on host port 5000")
        checks = [h for h in app.get("healthChecks") or []
                  if h.get("protocol") in ("HTTP", "MESOS_HTTP") and h.get("path") == "/ping"]
        if not checks:
            problems.append("no HTTP health check on /ping")
        elif index is not None and all(h.get("portIndex", 0) != index and h.get("port") != 5000
                                       for h in checks):
            problems.append(f"the /ping health check does not target port 5000 "
                            f"(portIndex {index} in the port mappings)")
        if env.get("HOOK_TOKEN", None) != "":
            problems.append("env HOOK_TOKEN must be present and blank (optional fixed token)")
    if part == "slave":
        if env.get("GIT_CREDENTIALS", None) != "":
            problems.append("env GIT_CREDENTIALS must be present and blank")
        for name in ("GIT_USERNAME", "GIT_PASSWORD", "GIT_NETRC"):
            if name in env:
                problems.append(f"env {name}: no longer read (the slave refuses to start); "
                                f"use GIT_CREDENTIALS")
        vols = (app.get("container") or {}).get("volumes") or []
        if not any(v.get("containerPath") == "/var/run/docker.sock"
                   and v.get("hostPath") == "/var/run/docker.sock" and v.get("mode") == "RW"
                   for v in vols):
            problems.append("no RW volume /var/run/docker.sock -> /var/run/docker.sock "
                            "(builds use the host's Docker daemon)")
    if part == "redis":
        if not any(m.get("containerPort") == 6379 for m in ports):
            problems.append("no port mapping for container port 6379")
    if part in ("hook", "slave", "redis"):
        vols = (app.get("container") or {}).get("volumes") or []
        if not any(v.get("containerPath") == PASSWORD_FILE and v.get("hostPath") == PASSWORD_HOST
                   and v.get("mode") == "RO" for v in vols):
            problems.append(f"no RO volume {PASSWORD_HOST} -> {PASSWORD_FILE} (Redis's password)")
        if part != "redis" and env.get("REDIS_PASSWORD_FILE") != PASSWORD_FILE:
            problems.append(f"env REDIS_PASSWORD_FILE must be {PASSWORD_FILE} (Redis runs locked)")
        if part == "redis" and env.get("REDIS_PASSWORD_FILE", PASSWORD_FILE) != PASSWORD_FILE:
            problems.append(f"env REDIS_PASSWORD_FILE must be {PASSWORD_FILE} or unset")
        for name, value in env.items():
            if re.search(r"PASS|AUTH", name) and name != "REDIS_PASSWORD_FILE" or re.match(r"rediss?://[^@/]*:[^@/]*@", str(value)):
                problems.append(f"env {name}: a password in the environment (Marathon shows it to every reader "
                                f"of the app); use the password file")
    return [f"{source}: {p}" for p in problems]


# --- the checks ---------------------------------------------------------------

def check_json(path, validator, report, project=True):
    try:
        app = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as e:
        report.fail(rel(path), [f"not readable JSON: {e}"])
        return
    problems = schema_errors(validator, app)
    if project:
        problems += project_checks(os.path.basename(os.path.dirname(path)), app, "project")
    if problems:
        report.fail(rel(path), problems)
    else:
        report.ok(rel(path), "Marathon schema, draft-04")


def check_yml(path, validator, report, yaml, namespace, project=True):
    try:
        doc = yaml.safe_load(open(path, encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        report.fail(rel(path), [f"not readable YAML: {e}"])
        return
    problems, warnings = check_yaml_format(doc)
    for w in warnings:
        report.warn(rel(path), w)
    if problems:
        report.fail(rel(path), [f"format: {p}" for p in problems])
        return
    app = ocho_app(doc, namespace=namespace, stamp="2026-01-01-00-00-00")
    problems = [f"generated app JSON: {e}" for e in schema_errors(validator, app)]
    if project:
        problems += project_checks(os.path.basename(os.path.dirname(path)), app, "generated app JSON")
    if problems:
        report.fail(rel(path), problems)
    else:
        report.ok(rel(path), f"Ochothon format; generated app {app['id']} valid")


def self_test(validator, yaml, report):
    """The seed's files must give the results SOURCES.md records."""
    expect_valid = {"bridge.json": True, "Tomcat-Docker.json": True, "app.json": False}
    for name, valid in expect_valid.items():
        path = os.path.join(FIXTURES, "examples", name)
        errors = schema_errors(validator, json.load(open(path, encoding="utf-8")))
        if (not errors) == valid and (valid or len(errors) == 2):
            report.ok(f"self-test {rel(path)}", "valid" if valid else "invalid as recorded: "
                      + "; ".join(errors))
        else:
            report.fail(f"self-test {rel(path)}", [f"expected {'valid' if valid else '2 errors'}, "
                                                   f"got {errors or 'valid'}"])
    for path in sorted(glob.glob(os.path.join(FIXTURES, "ochothon", "*", "marathon.yml"))):
        doc = yaml.safe_load(open(path, encoding="utf-8"))
        problems, _ = check_yaml_format(doc)
        if not problems:
            problems = schema_errors(validator, ocho_app(doc, namespace="marathon"))
        if problems:
            report.fail(f"self-test {rel(path)}", problems)
        else:
            report.ok(f"self-test {rel(path)}", "format and generated app valid")
    bad = {
        "no image": {"cluster": "x"},
        "bad port": {"cluster": "x", "image": "i", "ports": ["5000:5000"]},
        "verbatim not a mapping": {"cluster": "x", "image": "i", "verbatim": None},
        "settings not a mapping": {"cluster": "x", "image": "i", "settings": ["a"]},
        "upper-case cluster": {"cluster": "Hook", "image": "i"},
    }
    for what, doc in bad.items():
        problems, _ = check_yaml_format(doc)
        if problems:
            report.ok(f"self-test rejects {what}", problems[0])
        else:
            report.fail(f"self-test rejects {what}", ["accepted"])
    # Redis open: each part without the password file, or with the password in env.
    hook = json.load(open(os.path.join(HERE, "marathon", "hook", "marathon.json"), encoding="utf-8"))
    hook["container"]["volumes"] = []
    del hook["env"]["REDIS_PASSWORD_FILE"]
    hook["env"]["REDIS_URL"] = "redis://:secret@redis-ci.marathon.mesos:6379/0"
    got = project_checks("hook", hook, "hook")
    want = ["no RO volume /etc/ci-backend/redis.pass", "env REDIS_PASSWORD_FILE must be", "env REDIS_URL: a password"]
    missing = [w for w in want if not any(w in p for p in got)]
    if missing:
        report.fail("self-test rejects an open Redis (hook)", [f"expected {w!r}" for w in missing] + [f"got {got}"])
    else:
        report.ok("self-test rejects an open Redis (hook)", "; ".join(got))
    redis = json.load(open(os.path.join(HERE, "marathon", "redis", "marathon.json"), encoding="utf-8"))
    redis["container"]["volumes"] = []
    got = project_checks("redis", redis, "redis")
    if any("no RO volume /etc/ci-backend/redis.pass" in p for p in got):
        report.ok("self-test rejects an open Redis (redis)", "; ".join(got))
    else:
        report.fail("self-test rejects an open Redis (redis)", [f"got {got}"])
    app = ocho_app({"cluster": "x", "image": "i", "ports": ["5000 *", "53 53 udp"],
                    "verbatim": {"env": {"A": "1"}, "container": {"volumes": [{"containerPath": "/v",
                                 "hostPath": "/v", "mode": "RW"}]}}}, namespace="ci", stamp="s")
    got = (mappings(app), [v["containerPath"] for v in app["container"]["volumes"]], sorted(app["env"]))
    want = ([{"containerPort": 8080, "protocol": "tcp"},
             {"containerPort": 5000, "hostPort": 5000, "protocol": "tcp"},
             {"containerPort": 53, "hostPort": 53, "protocol": "udp"}],
            ["/v", "/etc/mesos", "/opt/mesosphere"],
            ["A", "ochopod_cluster", "ochopod_debug", "ochopod_namespace", "ochopod_start", "pod"])
    if got == want:
        report.ok("self-test generated app (ports, verbatim merge)")
    else:
        report.fail("self-test generated app (ports, verbatim merge)", [f"got {got}", f"want {want}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("schema", nargs="?", help="Marathon AppDefinition JSON Schema (draft-04)")
    parser.add_argument("--namespace", default="ci", help="deploy -n namespace (default: ci)")
    parser.add_argument("--self-test", action="store_true",
                        help="also check the validator against the seed's files in tests/fixtures")
    parser.add_argument("--dir", default=os.path.join(HERE, "marathon"),
                        help="directory of <part>/marathon.{json,yml} (default: images/marathon)")
    args = parser.parse_args()

    schema_path = args.schema or next((p for p in (SHARED_SCHEMA, FIXTURE_SCHEMA)
                                       if os.path.exists(p)), FIXTURE_SCHEMA)
    if not os.path.exists(schema_path):
        print(f"validate: schema {schema_path} not found", file=sys.stderr)
        return 2
    jsonschema = need("jsonschema", "jsonschema")
    yaml = need("yaml", "PyYAML")

    schema = json.load(open(schema_path, encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    validator = jsonschema.Draft4Validator(schema)
    blob = git_blob(schema_path)
    print(f"schema {rel(schema_path)} (git blob {blob[:10]}"
          f"{', Marathon v1.6.352..v1.7.236' if blob == SCHEMA_BLOB else ', NOT the recorded copy'}),"
          f" validated as draft-04")

    report = Report()
    jsons = sorted(glob.glob(os.path.join(args.dir, "*", "marathon.json")))
    ymls = sorted(glob.glob(os.path.join(args.dir, "*", "marathon.yml")))
    if not jsons or not ymls:
        report.fail(rel(args.dir), ["no */marathon.json or */marathon.yml found"])
    for part in ("hook", "slave", "redis"):
        for name in ("marathon.json", "marathon.yml"):
            if not os.path.exists(os.path.join(args.dir, part, name)):
                report.fail(rel(os.path.join(args.dir, part, name)), ["missing"])
    for path in jsons:
        check_json(path, validator, report)
    for path in ymls:
        check_yml(path, validator, report, yaml, args.namespace)
    if args.self_test:
        self_test(validator, yaml, report)

    if report.failed:
        print(f"validate: {report.failed} check(s) failed", file=sys.stderr)
        return 1
    print("validate: all definitions valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
