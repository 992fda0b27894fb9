//! What the property tests (tests/proptest_api.rs) and the fuzz target
//! (fuzz/fuzz_targets/api.rs) take as a check Envoy would never send, and so one the
//! server must never allow: one model for both, included by path (`#[path]`).

use cedar_pdp::proto::envoy::service::auth::v3::CheckRequest;

/// A check Envoy's HTTP filter would never send: no HTTP attributes, a method that is not
/// an HTTP token of capitals, a path that is not absolute, a bad escape, a dot segment.
pub fn malformed(check: &CheckRequest) -> bool {
    let Some(http) = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return true;
    };
    let method = &http.method;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return true;
    }
    let path = http.path.split(['?', '#']).next().unwrap_or_default();
    let Some(path) = path.strip_prefix('/') else {
        return true;
    };
    path.split('/').any(|segment| match unescape(segment) {
        None => true,
        Some(segment) => segment == "." || segment == "..",
    })
}

/// `segment` percent-decoded; `None` for a bad escape or bytes that are not UTF-8.
fn unescape(segment: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut rest = segment.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}
