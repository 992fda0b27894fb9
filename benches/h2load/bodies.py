"""Request bodies for profiling the release server with h2load (README, "Profiling the
server under load"), written into the directory given (default: the current one).

- health.bin: grpc.health.v1.Health/Check
- authz.bin: cedarpdp.v1.Authorizer/IsAuthorized, bob reads a document of the example set
- check.bin: envoy.service.auth.v3.Authorization/Check, as Envoy sends it for
  GET /projects/roadmap/docs/acme-roadmap-q3 with a verified JWT subject `bob`
  (serve with ext_authz.toml, written beside it)
- batch.bin and item.bin: BatchIsAuthorized with 100 items carrying context and sharing a
  sent document, and one such item as an IsAuthorized call, on the rotating 10,000-policy
  set of the load benchmark (written to rotating/, the same set `benches/support`
  generates)
- stored.bin: IsAuthorized on the same set about a stored user and document (u7 writes
  d7, allowed), sending no entities: the call `latency.py` paces

A gRPC request body is a 5-byte frame header (no compression, big-endian length), then
the protobuf message, encoded here by hand.
"""
import json
import os
import struct
import sys


def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])


def field(number, payload):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def text(number, value):
    return field(number, value.encode())


def uid(kind, id_):
    return text(1, kind) + text(2, id_)


def framed(message):
    return b"\0" + struct.pack(">I", len(message)) + message


def rotating(out, policies=10_000, tenants=1_000):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "schema.cedarschema"), "w") as f:
        f.write(
            "entity Tenant;\nentity User in [Tenant] = { suspended: Bool };\n"
            "entity Doc in [Tenant];\naction read, write appliesTo { principal: [User], "
            "resource: [Doc], context: { level: Long } };\n"
        )
    lines = [
        '@id("no-suspended")\nforbid(principal, action, resource) when { principal.suspended };',
        '@id("no-level-0")\nforbid(principal, action, resource) when { context.level == 0 };',
    ]
    for i in range(policies):
        action = "read" if i % 2 == 0 else "write"
        lines.append(
            f'@id("p{i}")\npermit(principal == User::"u{i}", action == Action::"{action}", '
            f'resource in Tenant::"t{i % tenants}") when {{ context.level > {i % 3} }};'
        )
    with open(os.path.join(out, "policies.cedar"), "w") as f:
        f.write("\n".join(lines) + "\n")
    entities = []
    for i in range(1_000):
        tenant = [{"type": "Tenant", "id": f"t{i}"}]
        entities.append({"uid": {"type": "User", "id": f"u{i}"}, "attrs": {"suspended": False}, "parents": tenant})
        entities.append({"uid": {"type": "Doc", "id": f"d{i}"}, "attrs": {}, "parents": tenant})
    with open(os.path.join(out, "entities.json"), "w") as f:
        json.dump(entities, f)


def main(out):
    os.makedirs(out, exist_ok=True)

    def write(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    write("health.bin", framed(b""))
    write("authz.bin", framed(
        field(1, uid("Platform::User", "bob")) + field(2, uid("Platform::Action", "read"))
        + field(3, uid("Platform::Document", "acme-roadmap-q3"))))

    # CheckRequest.attributes: source peer, the HTTP request, jwt_authn's metadata.
    peer = field(1, field(1, text(2, "10.1.2.3")))  # Peer.address.socket_address.address
    headers = b"".join(field(3, text(1, k) + text(2, v))
                       for k, v in [("user-agent", "bench/1"), ("authorization", "Bearer x.y.z")])
    http = (text(1, "bench") + text(2, "GET") + headers
            + text(4, "/projects/roadmap/docs/acme-roadmap-q3") + text(5, "docs.acme.example"))
    payload = field(1, text(1, "sub") + field(2, text(3, "bob")))
    jwt = field(1, text(1, "jwt_payload") + field(2, field(5, payload)))
    metadata = field(1, text(1, "envoy.filters.http.jwt_authn") + field(2, jwt))
    write("check.bin", framed(field(1, field(1, peer) + field(4, field(2, http)) + field(11, metadata))))
    with open(os.path.join(out, "ext_authz.toml"), "w") as f:
        f.write(
            '[ext_authz]\naction_type = "Platform::Action"\nmethods = { GET = "read" }\n'
            'headers = ["user-agent"]\n'
            'upstream_headers = { "x-cedar-policy-version" = "{policy_version}" }\n'
            '[[ext_authz.principal]]\nfrom = "jwt"\ntype = "Platform::User"\n'
            '[[ext_authz.routes]]\npath = "/projects/{project}/docs/{doc}"\n'
            'resource_type = "Platform::Document"\nresource_id = "{doc}"\n'
        )

    rotating(os.path.join(out, "rotating"))
    level = text(1, "level") + field(2, varint(2 << 3) + varint(2))  # context {level: 2}
    sent = field(1, uid("Doc", "incoming")) + field(3, uid("Tenant", "t0"))

    def item(i):
        action = "read" if i % 2 == 0 else "write"
        return (field(1, uid("User", f"u{i}")) + field(2, uid("Action", action))
                + field(3, uid("Doc", "incoming")) + field(4, level))

    write("batch.bin", framed(field(1, sent) + b"".join(field(3, item(i)) for i in range(100))))
    write("item.bin", framed(item(0) + field(5, sent)))
    stored = (field(1, uid("User", "u7")) + field(2, uid("Action", "write"))
              + field(3, uid("Doc", "d7")) + field(4, level))
    write("stored.bin", framed(stored))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
