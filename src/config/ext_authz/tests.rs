use super::*;

#[test]
fn a_template_binds_whole_segments_and_a_rest_placeholder_the_remainder() {
    let t = Template::parse("/projects/{project}/files/{file...}").unwrap();
    assert_eq!(t.names().collect::<Vec<_>>(), ["project", "file"]);
    let path = ["", "projects", "p1", "files", "a", "b.txt"];
    assert_eq!(t.matches(&path).unwrap(), ["p1", "a/b.txt"]);
    assert!(t.matches(&["", "projects", "p1", "files"]).is_none());
    assert!(t.matches(&["", "projects", "", "files", "x"]).is_none());
}
