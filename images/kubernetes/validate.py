#!/usr/bin/env python3
"""Check the Kubernetes manifests under images/kubernetes/.

    images/kubernetes/validate.sh [--self-test]        (sets up the venv, then runs this)
    python3 images/kubernetes/validate.py [-k 1.30.0 ...] [--dir DIR] [--self-test]

1. Schema: every object of every *.yaml but kustomization.yaml must validate
   with kubernetes-validate in strict mode (unknown fields rejected) against
   each Kubernetes version given with -k (default: 1.28.0, the oldest these
   manifests need, and 1.30.0). A kind without a schema is an error too.
2. kustomization.yaml lists every manifest but secret.yaml (which must not be
   applied over the real Secret); when kubectl is on PATH, `kubectl
   kustomize` must build exactly the objects of the listed files.
3. What this project needs from them: the hook Deployment (>= 2 replicas,
   readiness and liveness on GET /ping port 5000, HOOK_TOKEN from a Secret
   key that exists, resources, non-root), its Service; the slave StatefulSet
   (SLAVE_INDEX from the pod-index label, SLAVE_CACHE on a volume claim
   template, a headless serviceName, grace >= SLAVE_GRACE, credentials and
   forge tokens as files of a 0400 secret volume and never in env, no
   fsGroup); Redis with a claim at /data and appendonly/appendfsync always;
   REDIS_URL naming the redis Service; every image ci-backend/<part>:<crate
   version> with imagePullPolicy IfNotPresent or Never. Redis locked: started
   by ci-redis-start, and Redis, the hook and the slave each with
   REDIS_PASSWORD_FILE on a secret volume of one Secret key, readable by that
   container's user only (the slave's: 0400, root's; the hook's and Redis's:
   no bits for others, group bits only for an fsGroup that is their own
   runAsGroup); the hook not running as nobody (the slaves' build user).

--self-test also feeds the broken manifests of tests/fixtures/kubernetes/
(each replaces the objects of the same kind and name); each must be rejected
with every message its `# expect:` lines name.

Exit status: 0 all valid, 1 a manifest is wrong, 2 the tool cannot run.
"""

import argparse
import copy
import glob
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "kubernetes")
POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"
DEFAULT_VERSIONS = ["1.28.0", "1.30.0"]

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
except ImportError as e:  # run through validate.sh, which makes the venv
    sys.exit(f"validate: {e}; run images/kubernetes/validate.sh (it installs kubernetes-validate in a venv)")


def rel(path):
    return os.path.relpath(path, os.getcwd())


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(doc):
    return (doc.get("kind"), (doc.get("metadata") or {}).get("name"))


# --- 1. schema ------------------------------------------------------------------

def schema_problems(doc, versions):
    out = []
    for version in versions:
        try:
            kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
        except ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top level)"
            out.append(f"schema {version} (strict): {where}: {e.message[:200]}")
        except SchemaNotFoundError as e:
            out.append(f"schema {version}: {e.message}")
    return out


# --- 3. the project's own expectations --------------------------------------------

def crate_version():
    text = open(os.path.join(ROOT, "Cargo.toml"), encoding="utf-8").read()
    m = re.search(r'(?ms)^\[package\].*?^version\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else None


def pod_spec(doc):
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def containers(doc, init=False):
    spec = pod_spec(doc)
    return (spec.get("initContainers") or [] if init else []) + (spec.get("containers") or [])


def env_of(container):
    return {e.get("name"): e for e in container.get("env") or []}


def quantity(text):
    """A memory quantity in bytes (Ki, Mi, Gi, k, M, G, plain)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not m:
        return None
    mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return float(m.group(1)) * mult


def selects(service, doc):
    """Does the Service's selector pick the workload's pods?"""
    selector = (service.get("spec") or {}).get("selector") or {}
    labels = ((doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(container, port):
    """The number a probe's or Service's (named or numbered) port means."""
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def secret_file(spec, c, path, secret_keys):
    """Where the file `path` of container `c` comes from: (problem or None,
    (secret name, key), mode)."""
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    mount = next((m for p, m in mounts.items() if path.startswith(p.rstrip("/") + "/")), None)
    vol = volumes.get((mount or {}).get("name"), {}).get("secret")
    if mount is None or vol is None:
        return f"{path} is not on a mounted secret volume", None, None
    inside = path[len(mount["mountPath"].rstrip("/")) + 1:]
    items = vol.get("items")
    item = next((i for i in items if i.get("path") == inside), None) if items else {"key": inside}
    keys = secret_keys(vol.get("secretName"))
    if item is None or (keys is not None and item.get("key") not in keys):
        return f"{path}: no such key in Secret {vol.get('secretName')!r}", None, None
    if keys is None:
        return f"Secret {vol.get('secretName')!r} is not among the manifests", None, None
    return None, (vol.get("secretName"), item.get("key")), item.get("mode", vol.get("defaultMode", 0o644))


def project_problems(objects):
    problems = []
    say = problems.append
    by_key = {key(d): d for d in objects}
    version = crate_version()
    services = {name: d for (kind, name), d in by_key.items() if kind == "Service"}
    secrets = {name: d for (kind, name), d in by_key.items() if kind == "Secret"}

    def secret_keys(name):
        s = secrets.get(name)
        if s is None:
            return None
        return set((s.get("data") or {})) | set((s.get("stringData") or {}))

    # every workload: selector matches its pods, images, pull policy
    for (kind, name), d in by_key.items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        selector = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        labels = ((d.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            say(f"{kind.lower()}/{name}: spec.selector.matchLabels do not match the pod template's labels")
        for c in containers(d, init=True):
            image = c.get("image", "")
            part = name if name in ("hook", "slave", "redis") else None
            if part and image != f"ci-backend/{part}:{version}":
                say(f"{kind.lower()}/{name}: container {c.get('name')}: image {image!r}, expected "
                    f"ci-backend/{part}:{version} (build-images.sh's tag, the crate version in Cargo.toml)")
            if c.get("imagePullPolicy") not in ("IfNotPresent", "Never"):
                say(f"{kind.lower()}/{name}: container {c.get('name')}: imagePullPolicy must be IfNotPresent "
                    f"or Never (the images are built locally, there is no registry)")
            env = env_of(c)
            if "REDIS_URL" in env or name in ("hook", "slave"):
                url = (env.get("REDIS_URL") or {}).get("value", "")
                m = re.fullmatch(r"redis://(?:[^@/]*@)?([^:/]+)(?::(\d+))?(?:/\d+)?", url)
                svc = services.get(m.group(1)) if m else None
                port = int(m.group(2) or 6379) if m else None
                if not m:
                    say(f"{kind.lower()}/{name}: env REDIS_URL {url!r} is not redis://<service>:<port>/<db>")
                elif svc is None or not selects(svc, by_key.get(("StatefulSet", "redis"), {})):
                    say(f"{kind.lower()}/{name}: env REDIS_URL names {m.group(1)!r}, not the Service of the redis StatefulSet")
                elif port not in [p.get("port") for p in svc["spec"].get("ports") or []]:
                    say(f"{kind.lower()}/{name}: env REDIS_URL port {port} is not a port of Service {m.group(1)}")
        if pod_spec(d).get("enableServiceLinks") is not False:
            say(f"{kind.lower()}/{name}: enableServiceLinks must be false (Service variables such as "
                f"HOOK_PORT or SLAVE_PORT would mix with the settings)")

    # the hook
    hook = by_key.get(("Deployment", "hook"))
    if hook is None:
        say("deployment/hook is missing")
    else:
        spec = hook.get("spec") or {}
        if (spec.get("replicas") or 1) < 2:
            say("deployment/hook: replicas must be >= 2 (a hook restart must not refuse web-hooks)")
        c = next(iter(containers(hook)), {})
        if not any(p.get("containerPort") == 5000 for p in c.get("ports") or []):
            say("deployment/hook: no containerPort 5000")
        for probe in ("readinessProbe", "livenessProbe"):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if get.get("path") != "/ping" or container_port(c, get.get("port")) != 5000:
                say(f"deployment/hook: {probe} must be httpGet /ping on port 5000")
        token = (env_of(c).get("HOOK_TOKEN") or {}).get("valueFrom", {}).get("secretKeyRef")
        if not token:
            say("deployment/hook: env HOOK_TOKEN must come from a Secret (valueFrom.secretKeyRef)")
        elif secret_keys(token.get("name")) is None:
            say(f"deployment/hook: HOOK_TOKEN's Secret {token.get('name')!r} is not among the manifests")
        elif token.get("key") not in secret_keys(token.get("name")):
            say(f"deployment/hook: HOOK_TOKEN's key {token.get('key')!r} is not in Secret {token.get('name')}")
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            for what in ("cpu", "memory"):
                if what not in (res.get(section) or {}):
                    say(f"deployment/hook: resources.{section}.{what} is missing")
        limit = quantity((res.get("limits") or {}).get("memory", ""))
        if limit is not None and limit < 64 * 2**20:
            say("deployment/hook: resources.limits.memory under 64Mi (measured peak 35.6 MiB; leave room)")
        sc, psc = c.get("securityContext") or {}, pod_spec(hook).get("securityContext") or {}
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            say("deployment/hook: runAsNonRoot must be true (the image runs as 10001)")
        if sc.get("runAsUser", psc.get("runAsUser")) in (None, 65534):
            say("deployment/hook: runAsUser must be set, and not 65534 (nobody: the slaves' build user), "
                "so that the Redis password file is the hook's only (the image's is 10001)")
        if sc.get("allowPrivilegeEscalation") is not False:
            say("deployment/hook: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            say("deployment/hook: capabilities must drop ALL")
        svc = services.get("hook")
        if svc is None or not selects(svc, hook):
            say("service/hook: missing, or its selector does not pick the hook pods")
        elif not any(container_port(c, p.get("targetPort", p.get("port"))) == 5000 for p in svc["spec"].get("ports") or []):
            say("service/hook: no port targets the hook's port 5000")

    # the slaves
    slave = by_key.get(("StatefulSet", "slave"))
    if slave is None:
        say("statefulset/slave is missing")
    else:
        spec = slave.get("spec") or {}
        c = next(iter(containers(slave)), {})
        env = env_of(c)
        index = ((env.get("SLAVE_INDEX") or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
        if index != POD_INDEX:
            say(f"statefulset/slave: env SLAVE_INDEX must be the downward API fieldRef {POD_INDEX} "
                f"(the pod ordinal), not {index or (env.get('SLAVE_INDEX') or {}).get('value')!r}")
        cache = (env.get("SLAVE_CACHE") or {}).get("value", "/var/cache/ci")
        claims = {(t.get("metadata") or {}).get("name") for t in spec.get("volumeClaimTemplates") or []}
        volumes = {v.get("name"): v for v in pod_spec(slave).get("volumes") or []}
        mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
        on = (mounts.get(cache) or {}).get("name")
        if on not in claims or on in volumes:
            say(f"statefulset/slave: SLAVE_CACHE {cache} must be the mount of a volumeClaimTemplate "
                f"(it is {'not mounted' if on is None else 'volume ' + repr(on)})")
        headless = services.get(spec.get("serviceName"))
        if headless is None or (headless.get("spec") or {}).get("clusterIP") != "None" or not selects(headless, slave):
            say(f"statefulset/slave: serviceName {spec.get('serviceName')!r} must be a headless Service "
                f"(clusterIP: None) selecting the slave pods")
        grace = int((env.get("SLAVE_GRACE") or {}).get("value", 30))
        if (pod_spec(slave).get("terminationGracePeriodSeconds") or 30) < grace:
            say(f"statefulset/slave: terminationGracePeriodSeconds must be >= SLAVE_GRACE ({grace})")
        for name, e in env.items():
            ref = (e.get("valueFrom") or {})
            if "secretKeyRef" in ref:
                say(f"statefulset/slave: env {name} comes from a Secret: slave secrets are files, never env")
            if name in ("GIT_CREDENTIALS", "SLAVE_FORGES") and (e.get("value") or ref):
                say(f"statefulset/slave: env {name} is set: use {name}_FILE on a secret volume")
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                say("statefulset/slave: envFrom secretRef: slave secrets are files, never env")
        for setting in ("GIT_CREDENTIALS_FILE", "SLAVE_FORGES_FILE"):
            path = (env.get(setting) or {}).get("value")
            if not path:
                say(f"statefulset/slave: env {setting} is missing")
                continue
            problem, _, mode = secret_file(pod_spec(slave), c, path, secret_keys)
            if problem:
                say(f"statefulset/slave: {setting} {problem}")
                continue
            if mode & 0o077:
                say(f"statefulset/slave: {setting} file mode {mode:04o}: the slave refuses a file others may read (0400)")
        if "fsGroup" in (pod_spec(slave).get("securityContext") or {}):
            say("statefulset/slave: no fsGroup: it makes the secret files group-readable, which the slave refuses")

    # Redis
    redis = by_key.get(("StatefulSet", "redis"))
    if redis is None:
        say("statefulset/redis is missing")
    else:
        c = next((c for c in containers(redis) if c.get("name") == "redis"), {})
        argv = " ".join((c.get("command") or []) + (c.get("args") or []))
        for option in ("--appendonly yes", "--appendfsync always"):
            if option not in argv:
                say(f"statefulset/redis: the redis container's command must say {option}")
        claims = {(t.get("metadata") or {}).get("name") for t in (redis.get("spec") or {}).get("volumeClaimTemplates") or []}
        if not any(m.get("mountPath") == "/data" and m.get("name") in claims for m in c.get("volumeMounts") or []):
            say("statefulset/redis: /data must be the mount of a volumeClaimTemplate (the AOF must survive the pod)")
        if not any(selects(s, redis) and any(p.get("port") == 6379 for p in s["spec"].get("ports") or [])
                   for s in services.values()):
            say("statefulset/redis: no Service on port 6379 selects it")
        if (c.get("command") or [""])[0] != "ci-redis-start":
            say("statefulset/redis: the redis container's command must be ci-redis-start (Redis with its password)")

    # Redis locked: one password, a file of one Secret key in each of Redis, hook and slave
    sources = set()
    for kind, name in (("StatefulSet", "redis"), ("Deployment", "hook"), ("StatefulSet", "slave")):
        d = by_key.get((kind, name))
        if d is None:
            continue
        who = f"{kind.lower()}/{name}"
        c = next((c for c in containers(d) if c.get("name") == name), {})
        path = (env_of(c).get("REDIS_PASSWORD_FILE") or {}).get("value")
        if not path:
            say(f"{who}: env REDIS_PASSWORD_FILE is missing (Redis runs locked: its password from the Secret)")
            continue
        problem, source, mode = secret_file(pod_spec(d), c, path, secret_keys)
        if problem:
            say(f"{who}: REDIS_PASSWORD_FILE {problem}")
            continue
        sources.add(source)
        psc, sc = pod_spec(d).get("securityContext") or {}, c.get("securityContext") or {}
        group = sc.get("runAsGroup", psc.get("runAsGroup"))
        if mode & 0o007 or (mode & 0o070 and (psc.get("fsGroup") is None or psc.get("fsGroup") != group)):
            say(f"{who}: REDIS_PASSWORD_FILE file mode {mode:04o}: readable by others than the container's user "
                f"(0400 for root; 0440 with an fsGroup that is the container's runAsGroup)")
    if len(sources) > 1:
        say(f"REDIS_PASSWORD_FILE: Redis, hook and slave read different Secret keys: {sorted(sources)}")
    return problems


def kustomization_problems(directory, manifests):
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        return ["kustomization.yaml is missing"]
    doc = load(path)[0]
    listed = doc.get("resources") or []
    want = sorted(os.path.basename(m) for m in manifests if os.path.basename(m) != "secret.yaml")
    out = [f"kustomization.yaml lists {r}, which does not exist" for r in listed
           if not os.path.exists(os.path.join(directory, r))]
    out += [f"kustomization.yaml does not list {m}" for m in want if m not in listed]
    if "secret.yaml" in listed:
        out.append("kustomization.yaml lists secret.yaml: its placeholders would replace the real Secret")
    return out


def kustomize_problems(directory):
    """When kubectl is there: `kubectl kustomize` must build exactly the listed files' objects."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    run = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if run.returncode != 0:
        return [f"kubectl kustomize {rel(directory)}: {run.stderr.strip()[:300]}"]
    built = sorted(key(d) for d in yaml.safe_load_all(run.stdout) if d)
    listed = load(os.path.join(directory, "kustomization.yaml"))[0].get("resources") or []
    want = sorted(key(d) for r in listed if os.path.exists(os.path.join(directory, r))
                  for d in load(os.path.join(directory, r)))
    return [] if built == want else [f"kubectl kustomize built {built}, the listed files hold {want}"]


# --- running --------------------------------------------------------------------

def check_set(label, files, versions, replace=None):
    """Schema problems per file, then project problems of the whole set."""
    problems = []
    objects = {}
    for path in files:
        for doc in load(path):
            problems += [f"{os.path.basename(path)} {key(doc)[0]}/{key(doc)[1]}: {p}"
                         for p in schema_problems(doc, versions)]
            objects[key(doc)] = doc
    for doc in replace or []:
        problems += [f"{label} {key(doc)[0]}/{key(doc)[1]}: {p}" for p in schema_problems(doc, versions)]
        objects[key(doc)] = doc
    return problems + project_problems(list(objects.values()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--kubernetes-version", action="append", dest="versions",
                        help=f"Kubernetes version to validate against (repeatable; default {' and '.join(DEFAULT_VERSIONS)})")
    parser.add_argument("--dir", default=HERE, help="directory of the manifests (default: images/kubernetes)")
    parser.add_argument("--self-test", action="store_true", help="also prove the broken fixtures are rejected")
    args = parser.parse_args()
    versions = args.versions or DEFAULT_VERSIONS

    manifests = sorted(p for p in glob.glob(os.path.join(args.dir, "*.yaml"))
                       if os.path.basename(p) != "kustomization.yaml")
    print(f"kubernetes-validate {getattr(kubernetes_validate, '__version__', '?')} "
          f"(strict), Kubernetes {', '.join(versions)}; {len(manifests)} manifests in {rel(args.dir)}")
    failed = 0
    problems = kustomization_problems(args.dir, manifests) + check_set("", manifests, versions)
    kustomized = kustomize_problems(args.dir)
    problems += kustomized or []
    if problems:
        failed += 1
        print(f"FAIL  {rel(args.dir)}")
        for p in problems:
            print(f"      - {p}")
    else:
        for path in manifests:
            kinds = ", ".join(f"{k}/{n}" for k, n in map(key, load(path)))
            print(f"ok    {rel(path)}  ({kinds})")
        print("ok    project checks (hook, slave, redis, secret, kustomization)")
        print("ok    kubectl kustomize builds the listed objects" if kustomized is not None
              else "skip  kubectl kustomize (no kubectl on PATH)")

    if args.self_test:
        fixtures = sorted(glob.glob(os.path.join(FIXTURES, "*.yaml")))
        if not fixtures:
            failed += 1
            print(f"FAIL  self-test: no fixtures in {rel(FIXTURES)}")
        for path in fixtures:
            expect = re.findall(r"(?m)^# expect: (.+?)\s*$", open(path, encoding="utf-8").read())
            got = check_set(os.path.basename(path), manifests, versions, replace=load(path))
            missing = [e for e in expect if not any(e in p for p in got)]
            if got and expect and not missing:
                print(f"ok    self-test rejects {rel(path)}  ({len(got)} problems, {len(expect)} expected found)")
            else:
                failed += 1
                print(f"FAIL  self-test {rel(path)}: "
                      + ("accepted" if not got else "no `# expect:` lines" if not expect else "rejected, but not for"))
                for e in missing:
                    print(f"      - expected: {e}")
                for p in got:
                    print(f"      - got: {p}")

    sys.stdout.flush()
    if failed:
        print("validate: Kubernetes manifests: FAILED", file=sys.stderr)
        return 1
    print("validate: Kubernetes manifests valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
