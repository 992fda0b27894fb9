use super::*;

#[test]
fn escapes_of_unreserved_characters_are_decoded_and_others_kept() {
    assert_eq!(normalize("/%61dmin/a%2fb/%7e"), "/admin/a%2Fb/~");
    assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
    assert_eq!(percent_decode("%+1"), None);
    assert_eq!(percent_decode("%ff"), None, "not UTF-8");
}
