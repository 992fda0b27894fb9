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

/// The settings of an `[ext_authz]` table body written in TOML.
fn settings(text: &str) -> ExtAuthzSettings {
    toml::from_str(text).unwrap_or_else(|e| panic!("{text}\ndoes not parse: {e}"))
}

/// The key and message `compile` refuses `text` with.
fn refusal(text: &str) -> (String, String) {
    match ExtAuthz::compile(&settings(text)) {
        Err(ConfigError::Invalid { key, message }) => (key, message),
        Err(other) => panic!("{text}\nrefused with an unexpected error: {other}"),
        Ok(compiled) => panic!("{text}\ncompiled: {compiled:?}"),
    }
}

fn compiled(text: &str) -> ExtAuthz {
    ExtAuthz::compile(&settings(text)).unwrap_or_else(|e| panic!("{text}\ndoes not compile: {e}"))
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').collect()
}

fn render(text: &Text, values: &[(&str, &str)]) -> String {
    text.render(|name| values.iter().find(|(k, _)| *k == name).map(|(_, v)| *v))
}

// --- Template -------------------------------------------------------------------------

#[test]
fn a_placeholder_must_be_a_whole_segment() {
    for text in ["/projects/p{id}", "/projects/{id}.json", "/a/x}", "/a/{x"] {
        let error = Template::parse(text).unwrap_err();
        assert!(
            error.contains("a placeholder must be a whole segment"),
            "{text}: {error}"
        );
    }
    // Two placeholders in one segment read as one bad name: refused either way.
    assert_eq!(
        Template::parse("/a/{x}{y}").unwrap_err(),
        "{x}{y}: a placeholder name is letters, digits and _"
    );
}

#[test]
fn placeholder_names_are_letters_digits_and_underscores() {
    for (text, shown) in [
        ("/a/{}", "{}"),
        ("/a/{...}", "{...}"),
        ("/a/{my-name}", "{my-name}"),
        ("/a/{x y}", "{x y}"),
        ("/a/{x.y}", "{x.y}"),
        ("/a/{ü}", "{ü}"),
    ] {
        let error = Template::parse(text).unwrap_err();
        assert_eq!(
            error,
            format!("{shown}: a placeholder name is letters, digits and _"),
            "{text}"
        );
    }
    let ok = Template::parse("/a/{Snake_Case_2}").unwrap();
    assert_eq!(ok.names().collect::<Vec<_>>(), ["Snake_Case_2"]);
}

#[test]
fn a_placeholder_name_may_appear_only_once() {
    assert_eq!(
        Template::parse("/t/{id}/docs/{id}").unwrap_err(),
        "{id} appears twice"
    );
    assert_eq!(
        Template::parse("/t/{id}/{id...}").unwrap_err(),
        "{id} appears twice"
    );
}

#[test]
fn a_rest_placeholder_must_be_the_last_segment() {
    assert_eq!(
        Template::parse("/files/{path...}/raw").unwrap_err(),
        "{path...} can only be the last segment"
    );
    assert_eq!(
        Template::parse("/{a...}/{b...}").unwrap_err(),
        "{a...} can only be the last segment"
    );
}

#[test]
fn templates_match_literals_exactly_and_placeholders_one_non_empty_segment() {
    let t: Template = "/projects/{project}/docs/{doc}".parse().unwrap();
    assert_eq!(t.names().collect::<Vec<_>>(), ["project", "doc"]);
    assert_eq!(
        t.matches(&segments("/projects/p1/docs/d1")).unwrap(),
        ["p1", "d1"]
    );
    // Literals are case-sensitive; the segment count must be the same.
    assert!(t.matches(&segments("/Projects/p1/docs/d1")).is_none());
    assert!(t.matches(&segments("/projects/p1/docs")).is_none());
    assert!(t.matches(&segments("/projects/p1/docs/d1/share")).is_none());
    assert!(t.matches(&segments("/projects/p1/docs/")).is_none());
    assert!(t.matches(&segments("/projects//docs/d1")).is_none());

    // No placeholders at all.
    let fixed = Template::parse("/healthz").unwrap();
    assert_eq!(fixed.names().count(), 0);
    assert_eq!(
        fixed.matches(&segments("/healthz")).unwrap(),
        Vec::<String>::new()
    );
    assert!(fixed.matches(&segments("/healthz/x")).is_none());

    // A rest placeholder needs at least one segment and binds the rest with '/'.
    let rest = Template::parse("/static/{file...}").unwrap();
    assert_eq!(rest.matches(&segments("/static/a")).unwrap(), ["a"]);
    assert_eq!(
        rest.matches(&segments("/static/css/site/main.css"))
            .unwrap(),
        ["css/site/main.css"]
    );
    assert!(rest.matches(&segments("/static")).is_none());
    assert!(rest.matches(&segments("/static/")).is_none());
    assert!(rest.matches(&segments("/other/a")).is_none());
}

#[test]
fn a_spiffe_template_splits_on_slashes_like_a_path() {
    let t = Template::parse("spiffe://acme.example/ns/{namespace}/sa/{name}").unwrap();
    assert_eq!(t.names().collect::<Vec<_>>(), ["namespace", "name"]);
    assert_eq!(
        t.matches(&segments("spiffe://acme.example/ns/prod/sa/web"))
            .unwrap(),
        ["prod", "web"]
    );
    assert!(
        t.matches(&segments("spiffe://evil.example/ns/prod/sa/web"))
            .is_none()
    );
    assert!(
        t.matches(&segments("spiffe://acme.example/ns/prod/sa/web/extra"))
            .is_none()
    );
}

// --- Text -----------------------------------------------------------------------------

#[test]
fn an_unknown_placeholder_is_refused_listing_the_known_ones() {
    assert_eq!(
        Text::parse("{docid}", &["host", "path", "method", "doc"]).unwrap_err(),
        "unknown placeholder {docid} (known here: {host}, {path}, {method}, {doc})"
    );
    assert_eq!(
        Text::parse("x-{}", &["a"]).unwrap_err(),
        "unknown placeholder {} (known here: {a})"
    );
    assert_eq!(
        Text::parse("{a}", &[]).unwrap_err(),
        "unknown placeholder {a} (known here: )"
    );
}

#[test]
fn an_unclosed_placeholder_is_refused() {
    // "{host" is not "{host}": a brace that is never closed is a mistake in the config.
    let parsed = Text::parse("{host", &["host"]);
    assert!(parsed.is_err(), "{{host accepted as {parsed:?}");
    let parsed = Text::parse("id-{host", &["host"]);
    assert!(parsed.is_err(), "id-{{host accepted as {parsed:?}");
}

#[test]
fn doubled_braces_are_literal_and_a_lone_closing_brace_is_refused() {
    let text = Text::parse("{{literal}} {name}-}}{{", &["name"]).unwrap();
    assert_eq!(render(&text, &[("name", "v")]), "{literal} v-}{");
    assert_eq!(
        text.parts,
        [
            TextPart::Literal("{literal} ".to_owned()),
            TextPart::Placeholder("name".to_owned()),
            TextPart::Literal("-}{".to_owned()),
        ]
    );
    for bad in ["}", "a}b", "{name}}", "}}}"] {
        assert_eq!(
            Text::parse(bad, &["name"]).unwrap_err(),
            "a lone '}' (write '}}' for a brace)",
            "{bad}"
        );
    }
}

#[test]
fn text_renders_each_placeholder_and_an_unset_one_as_empty() {
    let text = Text::parse(
        "{host}{path}?by={method}&{host}",
        &["host", "path", "method"],
    )
    .unwrap();
    assert_eq!(
        render(
            &text,
            &[
                ("host", "docs.example.com"),
                ("path", "/a/b"),
                ("method", "GET")
            ]
        ),
        "docs.example.com/a/b?by=GET&docs.example.com"
    );
    assert_eq!(render(&text, &[("path", "/a")]), "/a?by=&");
    assert_eq!(render(&Text::parse("", &[]).unwrap(), &[]), "");
    assert_eq!(render(&Text::parse("plain", &[]).unwrap(), &[]), "plain");
}

// --- HostPattern ----------------------------------------------------------------------

#[test]
fn host_patterns_match_exactly_or_strict_subdomains() {
    let exact = HostPattern::Exact("docs.example.com".to_owned());
    assert!(exact.matches("docs.example.com"));
    assert!(!exact.matches("example.com"));
    assert!(!exact.matches("a.docs.example.com"));
    assert!(!exact.matches("docs.example.com.evil"));

    let suffix = HostPattern::Suffix(".example.com".to_owned());
    assert!(suffix.matches("docs.example.com"));
    assert!(suffix.matches("a.b.example.com"));
    assert!(
        !suffix.matches("example.com"),
        "the bare domain is not a subdomain"
    );
    assert!(!suffix.matches(".example.com"));
    assert!(!suffix.matches("badexample.com"));
    assert!(!suffix.matches("example.com.evil"));
}

#[test]
fn route_hosts_compile_lower_case_and_bad_ones_are_refused() {
    let mapping = compiled(
        r#"
        [[routes]]
        path = "/a"
        host = "Docs.Example.COM"
        [[routes]]
        path = "/b"
        host = "*.Example.com"
        "#,
    );
    assert_eq!(
        mapping.routes[0].host,
        Some(HostPattern::Exact("docs.example.com".to_owned()))
    );
    assert_eq!(
        mapping.routes[1].host,
        Some(HostPattern::Suffix(".example.com".to_owned()))
    );
    let suffix = mapping.routes[1].host.as_ref().unwrap();
    assert!(suffix.matches("docs.example.com"));
    assert!(!suffix.matches("example.com"));

    for bad in [
        "",
        "*",
        "*.",
        "a..b",
        "docs.example.com:8080",
        "a.*.com",
        "exa mple.com",
        "docs/example",
    ] {
        let (key, message) = refusal(&format!("[[routes]]\npath = \"/a\"\nhost = {bad:?}\n"));
        assert_eq!(key, "ext_authz.routes[0].host", "{bad:?}");
        assert_eq!(
            message,
            format!("{bad:?} is not a host name (or *.suffix)"),
            "{bad:?}"
        );
    }
}

// --- compile: errors name their key ---------------------------------------------------

#[test]
fn a_header_source_needs_the_headers_name() {
    let (key, message) = refusal("[[principal]]\nfrom = \"header\"\ntype = \"User\"\n");
    assert_eq!(key, "ext_authz.principal[0].header");
    assert_eq!(message, "from = \"header\" needs the header's name");

    // The index is the entry's.
    let (key, _) = refusal(
        r#"
        [[principal]]
        from = "mtls"
        type = "Service"
        [[principal]]
        from = "header"
        type = "User"
        "#,
    );
    assert_eq!(key, "ext_authz.principal[1].header");
}

#[test]
fn fields_of_another_source_are_refused() {
    for (from, field, value, expected_key) in [
        ("mtls", "claim", "sub", "ext_authz.principal[0].claim"),
        ("mtls", "header", "x-user", "ext_authz.principal[0].header"),
        ("jwt", "header", "x-user", "ext_authz.principal[0].header"),
        ("header", "claim", "sub", "ext_authz.principal[0].claim"),
    ] {
        let extra = if from == "header" && field != "header" {
            "header = \"x-user\"\n"
        } else {
            ""
        };
        let (key, message) = refusal(&format!(
            "[[principal]]\nfrom = {from:?}\ntype = \"User\"\n{field} = {value:?}\n{extra}"
        ));
        assert_eq!(key, expected_key, "{from} with {field}");
        assert_eq!(message, format!("has no meaning with from = {from:?}"));
    }
}

#[test]
fn a_principal_header_name_must_be_a_header_name_and_is_kept_lower_case() {
    let (key, message) =
        refusal("[[principal]]\nfrom = \"header\"\ntype = \"User\"\nheader = \"x user\"\n");
    assert_eq!(key, "ext_authz.principal[0].header");
    assert_eq!(message, "\"x user\" is not a header name");

    let mapping =
        compiled("[[principal]]\nfrom = \"header\"\ntype = \"User\"\nheader = \"X-Auth-User\"\n");
    assert_eq!(
        mapping.principals[0].source,
        Source::Header("x-auth-user".to_owned())
    );
}

#[test]
fn a_jwt_source_reads_sub_unless_told_otherwise() {
    let mapping = compiled(
        r#"
        [[principal]]
        from = "jwt"
        type = "User"
        [[principal]]
        from = "jwt"
        type = "User"
        claim = "email"
        "#,
    );
    assert_eq!(mapping.principals[0].source, Source::Jwt("sub".to_owned()));
    assert_eq!(
        mapping.principals[1].source,
        Source::Jwt("email".to_owned())
    );
}

#[test]
fn entity_type_names_are_checked_where_they_are_written() {
    for (text, expected_key, shown) in [
        (
            "[[principal]]\nfrom = \"mtls\"\ntype = \"Not A Type\"\n",
            "ext_authz.principal[0].type",
            "\"Not A Type\"",
        ),
        (
            "action_type = \"Platform::\"\n",
            "ext_authz.action_type",
            "\"Platform::\"",
        ),
        (
            "resource_type = \"1Doc\"\n",
            "ext_authz.resource_type",
            "\"1Doc\"",
        ),
        (
            "[[routes]]\npath = \"/a\"\nresource_type = \"Doc-ument\"\n",
            "ext_authz.routes[0].resource_type",
            "\"Doc-ument\"",
        ),
    ] {
        let (key, message) = refusal(text);
        assert_eq!(key, expected_key, "{text}");
        assert!(
            message.starts_with(&format!("{shown} is not an entity type name: ")),
            "{text}: {message}"
        );
    }
    // Namespaced names are fine.
    let mapping = compiled("action_type = \"Platform::Action\"\nresource_type = \"A::B::C\"\n");
    assert_eq!(mapping.action_type.to_string(), "Platform::Action");
    assert_eq!(mapping.resource.entity_type.to_string(), "A::B::C");
}

#[test]
fn principal_match_and_id_templates_are_checked() {
    let (key, message) = refusal(
        "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://td/ns/{ns}/sa/{ns}\"\n",
    );
    assert_eq!(key, "ext_authz.principal[0].match");
    assert_eq!(message, "{ns} appears twice");

    let (key, message) = refusal(
        "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://td/sa/{name}\"\nid = \"{nmae}\"\n",
    );
    assert_eq!(key, "ext_authz.principal[0].id");
    assert_eq!(
        message,
        "unknown placeholder {nmae} (known here: {identity}, {name})"
    );

    // Without a match, only the identity is known.
    let (key, message) = refusal("[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nid = \"{name}\"\n");
    assert_eq!(key, "ext_authz.principal[0].id");
    assert_eq!(
        message,
        "unknown placeholder {name} (known here: {identity})"
    );
}

#[test]
fn a_match_placeholder_named_identity_is_refused() {
    // `{identity}` in `id` is the whole identity; a `match` binding the same name would
    // be silently shadowed by it.
    let (key, message) = refusal(
        "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://td/sa/{identity}\"\nid = \"{identity}\"\n",
    );
    assert_eq!(key, "ext_authz.principal[0].match");
    assert!(message.contains("{identity}"), "{message}");
}

#[test]
fn a_route_path_must_start_with_a_slash_and_be_a_template() {
    let (key, message) = refusal("[[routes]]\npath = \"projects/{p}\"\n");
    assert_eq!(key, "ext_authz.routes[0].path");
    assert_eq!(message, "\"projects/{p}\" does not start with '/'");

    let (key, message) = refusal("[[routes]]\npath = \"\"\n");
    assert_eq!(key, "ext_authz.routes[0].path");
    assert_eq!(message, "\"\" does not start with '/'");

    let (key, message) =
        refusal("[[routes]]\npath = \"/ok\"\n[[routes]]\npath = \"/p/{a...}/x\"\n");
    assert_eq!(key, "ext_authz.routes[1].path");
    assert_eq!(message, "{a...} can only be the last segment");

    let (key, message) = refusal("[[routes]]\npath = \"/p/v{n}\"\n");
    assert_eq!(key, "ext_authz.routes[0].path");
    assert_eq!(
        message,
        "\"v{n}\": a placeholder must be a whole segment, like {name}"
    );
}

#[test]
fn reserved_placeholder_names_cannot_be_route_parameters() {
    for name in ["host", "path", "method"] {
        let (key, message) = refusal(&format!("[[routes]]\npath = \"/x/{{{name}}}\"\n"));
        assert_eq!(key, "ext_authz.routes[0].path", "{name}");
        assert_eq!(
            message,
            format!("{{{name}}} is a reserved placeholder; pick another name")
        );
    }
    let (key, _) = refusal("[[routes]]\npath = \"/x/{path...}\"\n");
    assert_eq!(key, "ext_authz.routes[0].path");
}

#[test]
fn an_unknown_placeholder_in_a_resource_id_names_the_route_and_the_known_ones() {
    // The example of docs/envoy.md, word for word.
    let error = ExtAuthz::compile(&settings(
        r#"
        [[routes]]
        path = "/projects/{project}"
        resource_id = "{project}"
        [[routes]]
        path = "/projects/{project}/docs/{doc}"
        resource_id = "{docid}"
        "#,
    ))
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "ext_authz.routes[1].resource_id: unknown placeholder {docid} (known here: {host}, {path}, {method}, {project}, {doc})"
    );

    // The table's resource_id knows only the request's placeholders...
    let (key, message) = refusal("resource_id = \"{project}\"\n");
    assert_eq!(key, "ext_authz.resource_id");
    assert_eq!(
        message,
        "unknown placeholder {project} (known here: {host}, {path}, {method})"
    );
    // ... and a route without its own inherits it, checked against the route's names.
    let mapping = compiled("resource_id = \"{method} {host}\"\n[[routes]]\npath = \"/p/{id}\"\n");
    assert_eq!(
        render(
            &mapping.routes[0].resource.id,
            &[("method", "GET"), ("host", "h")]
        ),
        "GET h"
    );
    assert_eq!(
        mapping.routes[0].resource.entity_type.to_string(),
        "Resource"
    );
}

#[test]
fn context_header_names_must_be_header_names() {
    let (key, message) = refusal("headers = [\"user-agent\", \"bad header\"]\n");
    assert_eq!(key, "ext_authz.headers[1]");
    assert_eq!(message, "\"bad header\" is not a header name");
    for bad in ["", "x:y", "é", "a\tb", "(x)"] {
        let (key, _) = refusal(&format!("headers = [{bad:?}]\n"));
        assert_eq!(key, "ext_authz.headers[0]", "{bad:?}");
    }
    let mapping = compiled("headers = [\"User-Agent\", \"X-Forwarded-For\", \":authority\"]\n");
    assert_eq!(
        mapping.headers,
        ["user-agent", "x-forwarded-for", ":authority"]
    );
}

#[test]
fn upstream_headers_are_checked_by_name_and_template() {
    let (key, message) = refusal("upstream_headers = { \"x bad\" = \"v\" }\n");
    assert_eq!(key, "ext_authz.upstream_headers.x bad");
    assert_eq!(message, "\"x bad\" is not a header name");

    for name in [":authority", ":path", "host", "Host"] {
        let (key, message) = refusal(&format!("upstream_headers = {{ {name:?} = \"v\" }}\n"));
        assert_eq!(key, format!("ext_authz.upstream_headers.{name}"));
        assert_eq!(message, "pseudo-headers and host cannot be set");
    }

    let (key, message) = refusal("upstream_headers = { \"x-who\" = \"{user}\" }\n");
    assert_eq!(key, "ext_authz.upstream_headers.x-who");
    assert_eq!(
        message,
        "unknown placeholder {user} (known here: {policy_version}, {principal}, {principal_type}, {principal_id}, {action}, {resource})"
    );

    let mapping = compiled(
        "upstream_headers = { \"X-Cedar-Principal\" = \"{principal}\", \"x-version\" = \"v={policy_version}\" }\n",
    );
    let names: Vec<_> = mapping
        .upstream_headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "X-Cedar-Principal".to_ascii_lowercase(),
            "x-version".to_owned()
        ]
    );
    assert_eq!(
        render(&mapping.upstream_headers[1].1, &[("policy_version", "abc")]),
        "v=abc"
    );
}

#[test]
fn method_tables_refuse_what_is_not_a_method_and_upper_case_the_rest() {
    let (key, message) = refusal("methods = { \"GE T\" = \"read\" }\n");
    assert_eq!(key, "ext_authz.methods.GE T");
    assert_eq!(message, "not an HTTP method");
    let (key, _) = refusal("methods = { \"\" = \"read\" }\n");
    assert_eq!(key, "ext_authz.methods.");
    let (key, message) = refusal("[[routes]]\npath = \"/a\"\nactions = { G1 = \"read\" }\n");
    assert_eq!(key, "ext_authz.routes[0].actions.G1");
    assert_eq!(message, "not an HTTP method");

    let mapping = compiled(
        "methods = { get = \"read\", Post = \"write\" }\n[[routes]]\npath = \"/a\"\nactions = { delete = \"remove\" }\n",
    );
    assert_eq!(
        mapping.methods,
        BTreeMap::from([
            ("GET".to_owned(), "read".to_owned()),
            ("POST".to_owned(), "write".to_owned()),
        ])
    );
    assert_eq!(
        mapping.routes[0].actions,
        BTreeMap::from([("DELETE".to_owned(), "remove".to_owned())])
    );
}

#[test]
fn an_empty_table_compiles_to_the_documented_defaults() {
    let mapping = ExtAuthz::compile(&ExtAuthzSettings::default()).unwrap();
    assert_eq!(mapping, ExtAuthz::default());
    assert_eq!(mapping, compiled(""));
    assert_eq!(mapping.principals.len(), 1);
    let principal = &mapping.principals[0];
    assert_eq!(principal.source, Source::Mtls);
    assert_eq!(principal.entity_type.to_string(), "Service");
    assert_eq!(principal.pattern, None);
    assert_eq!(
        render(&principal.id, &[("identity", "spiffe://td/sa/x")]),
        "spiffe://td/sa/x"
    );
    assert_eq!(mapping.action_type.to_string(), "Action");
    assert!(mapping.methods.is_empty());
    assert!(mapping.routes.is_empty());
    assert_eq!(mapping.resource.entity_type.to_string(), "Resource");
    assert_eq!(
        render(
            &mapping.resource.id,
            &[("host", "h.example"), ("path", "/p"), ("method", "GET")]
        ),
        "h.example/p"
    );
    assert_eq!(
        mapping.resource.id,
        Text::parse("{host}{path}", &REQUEST_PLACEHOLDERS).unwrap()
    );
    assert!(mapping.headers.is_empty());
    assert!(mapping.claims.is_empty());
    assert_eq!(mapping.context, ContextPart::ALL);
    assert_eq!(mapping.jwt_namespace, "envoy.filters.http.jwt_authn");
    assert_eq!(mapping.jwt_payload_key, "jwt_payload");
    assert!(mapping.upstream_headers.is_empty());
}

#[test]
fn a_route_takes_the_tables_resource_unless_it_names_its_own() {
    let mapping = compiled(
        r#"
        resource_type = "App::Thing"
        resource_id = "{path}"
        [[routes]]
        path = "/docs/{doc}"
        resource_type = "App::Doc"
        resource_id = "doc-{doc}"
        action = "view"
        [[routes]]
        path = "/any/{rest...}"
        [[routes]]
        path = "/pkg.Svc/{rpc}"
        action = "call:{rpc}"
        "#,
    );
    let docs = &mapping.routes[0];
    assert_eq!(docs.resource.entity_type.to_string(), "App::Doc");
    assert_eq!(render(&docs.resource.id, &[("doc", "d1")]), "doc-d1");
    assert_eq!(
        docs.action.as_ref().map(|a| render(a, &[])).as_deref(),
        Some("view")
    );
    assert_eq!(docs.host, None);
    let any = &mapping.routes[1];
    assert_eq!(any.resource.entity_type.to_string(), "App::Thing");
    assert_eq!(
        render(&any.resource.id, &[("path", "/any/a/b")]),
        "/any/a/b"
    );
    assert_eq!(any.action, None);
    assert_eq!(any.path.names().collect::<Vec<_>>(), ["rest"]);
    let grpc = mapping.routes[2].action.as_ref().unwrap();
    assert_eq!(render(grpc, &[("rpc", "Get")]), "call:Get");

    let (key, message) = refusal("[[routes]]\npath = \"/a/{x}\"\naction = \"{y}\"\n");
    assert_eq!(key, "ext_authz.routes[0].action");
    assert_eq!(
        message,
        "unknown placeholder {y} (known here: {host}, {path}, {method}, {x})"
    );
}

#[test]
fn the_context_parts_are_kept_once_in_the_documented_order() {
    let mapping = compiled("context = [\"claims\", \"method\", \"source_ip\", \"method\"]\n");
    assert_eq!(
        mapping.context,
        [
            ContextPart::Method,
            ContextPart::SourceIp,
            ContextPart::Claims
        ]
    );
    assert_eq!(compiled("context = []\n").context, []);
    let all = compiled(
        "context = [\"params\", \"headers\", \"source_ip\", \"host\", \"path\", \"method\", \"claims\"]\n",
    );
    assert_eq!(all.context, ContextPart::ALL);
}

#[test]
fn jwt_metadata_names_can_be_changed() {
    let mapping = compiled("jwt_metadata_namespace = \"my.jwt\"\njwt_payload_key = \"claims\"\n");
    assert_eq!(mapping.jwt_namespace, "my.jwt");
    assert_eq!(mapping.jwt_payload_key, "claims");
    assert_eq!(JWT_AUTHN_NAMESPACE, "envoy.filters.http.jwt_authn");
}

// --- TOML -----------------------------------------------------------------------------

fn parse_error(text: &str) -> String {
    match toml::from_str::<crate::config::Settings>(text) {
        Ok(parsed) => panic!("{text}\nparsed: {:?}", parsed.ext_authz),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_keys_and_values_in_the_table_are_refused() {
    for (text, word) in [
        ("[ext_authz]\nroute = []\n", "route"),
        ("[ext_authz]\nmethod = { GET = \"read\" }\n", "method"),
        (
            "[[ext_authz.principal]]\nfrom = \"mtls\"\ntype = \"S\"\npattern = \"x\"\n",
            "pattern",
        ),
        (
            "[[ext_authz.routes]]\npath = \"/a\"\nresource = \"R\"\n",
            "resource",
        ),
        (
            "[[ext_authz.principal]]\nfrom = \"ldap\"\ntype = \"S\"\n",
            "ldap",
        ),
        ("[ext_authz]\ncontext = [\"cookies\"]\n", "cookies"),
        ("[[ext_authz.principal]]\nfrom = \"mtls\"\n", "type"),
        ("[[ext_authz.routes]]\nresource_id = \"x\"\n", "path"),
    ] {
        let error = parse_error(text);
        assert!(error.contains(word), "{text}\n{error}");
    }
}

#[test]
fn the_table_parses_under_the_ext_authz_key() {
    let parsed: crate::config::Settings = toml::from_str(
        r#"
        [ext_authz]
        action_type = "Platform::Action"
        headers = ["user-agent"]
        [[ext_authz.principal]]
        from = "jwt"
        type = "Platform::User"
        [[ext_authz.routes]]
        path = "/p/{id}"
        resource_type = "Platform::Project"
        resource_id = "{id}"
        "#,
    )
    .unwrap();
    let table = parsed.ext_authz.expect("the table is there");
    assert_eq!(table.action_type.as_deref(), Some("Platform::Action"));
    assert_eq!(table.principal.len(), 1);
    assert_eq!(table.principal[0].from, PrincipalFrom::Jwt);
    assert_eq!(table.routes[0].path, "/p/{id}");
    assert!(ExtAuthz::compile(&table).is_ok());
    assert!(
        toml::from_str::<crate::config::Settings>("")
            .unwrap()
            .ext_authz
            .is_none()
    );
}

/// A config file's table is read as plain data; compiling it (once, as the server starts)
/// names the key at fault.
#[test]
fn a_config_file_table_compiles_reporting_the_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pdp.toml");
    std::fs::write(
        &path,
        "[ext_authz]\n[[ext_authz.routes]]\npath = \"/projects/{host}\"\n",
    )
    .unwrap();
    let config =
        crate::config::Config::resolve(Some(&path), crate::config::Settings::default()).unwrap();
    let error = ExtAuthz::compile(&config.ext_authz).unwrap_err();
    match &error {
        ConfigError::Invalid { key, message } => {
            assert_eq!(key, "ext_authz.routes[0].path");
            assert_eq!(
                message,
                "{host} is a reserved placeholder; pick another name"
            );
        }
        other => panic!("{other}"),
    }

    // An unknown key is a parse error naming the file and the key.
    std::fs::write(&path, "[ext_authz]\nmethod = {}\n").unwrap();
    let error = crate::config::Config::resolve(Some(&path), crate::config::Settings::default())
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ConfigError::Parse { .. }), "{message}");
    assert!(message.contains("pdp.toml"), "{message}");
    assert!(message.contains("method"), "{message}");

    // A good table resolves into the config as written.
    std::fs::write(&path, "[ext_authz]\naction_type = \"Platform::Action\"\n").unwrap();
    let config =
        crate::config::Config::resolve(Some(&path), crate::config::Settings::default()).unwrap();
    assert_eq!(
        config.ext_authz.action_type.as_deref(),
        Some("Platform::Action")
    );
}

#[test]
fn names_given_twice_are_refused_naming_both_keys() {
    // Two `headers.x-tenant` fields in one record made `Check` panic: refused up front.
    let (key, message) = refusal("headers = [\"x-tenant\", \"user-agent\", \"X-Tenant\"]\n");
    assert_eq!(key, "ext_authz.headers[2]");
    assert_eq!(
        message,
        "\"X-Tenant\" repeats ext_authz.headers[0] (header names are case-insensitive)"
    );
    let (key, message) = refusal("claims = [\"email\", \"scope\", \"email\"]\n");
    assert_eq!(key, "ext_authz.claims[2]");
    assert_eq!(message, "\"email\" repeats ext_authz.claims[0]");
    // Claims are JSON keys: case tells them apart.
    assert_eq!(
        compiled("claims = [\"sub\", \"Sub\"]\n").claims,
        ["sub", "Sub"]
    );

    let (key, message) = refusal("upstream_headers = { \"X-Who\" = \"a\", \"x-who\" = \"b\" }\n");
    assert_eq!(key, "ext_authz.upstream_headers.X-Who");
    assert_eq!(
        message,
        "repeats ext_authz.upstream_headers.x-who (header names are case-insensitive)"
    );
    let (key, message) = refusal("methods = { get = \"read\", GET = \"write\" }\n");
    assert_eq!(key, "ext_authz.methods.GET");
    assert_eq!(
        message,
        "repeats ext_authz.methods.get (methods are case-insensitive)"
    );
    let (key, _) = refusal("[[routes]]\npath = \"/a\"\nactions = { Put = \"a\", PUT = \"b\" }\n");
    assert_eq!(key, "ext_authz.routes[0].actions.PUT");
}

#[test]
fn a_principal_id_must_keep_every_part_of_the_identity_it_matched() {
    let spiffe = "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://td/ns/{namespace}/sa/{name}\"\n";
    // `{name}` alone gives every namespace's service account of that name one entity.
    let (key, message) = refusal(&format!("{spiffe}id = \"{{name}}\"\n"));
    assert_eq!(key, "ext_authz.principal[0].id");
    assert_eq!(
        message,
        "leaves out {namespace}, which the match binds: identities that differ only there \
         would be one principal (use every placeholder, or {identity})"
    );
    for joined in [
        "{namespace}{name}",
        "{namespace}.{name}",
        "{namespace}-{name}/x",
    ] {
        let (key, message) = refusal(&format!("{spiffe}id = {joined:?}\n"));
        assert_eq!(key, "ext_authz.principal[0].id", "{joined}");
        assert!(
            message.starts_with("runs placeholders together"),
            "{joined}: {message}"
        );
    }
    for whole in [
        "{namespace}/{name}",
        "ns/{namespace}/sa/{name}",
        "{identity}",
        "x:{identity}",
    ] {
        let mapping = compiled(&format!("{spiffe}id = {whole:?}\n"));
        assert_eq!(mapping.principals.len(), 1, "{whole}");
    }
    // Without a match there is nothing to leave out.
    compiled(
        "[[principal]]\nfrom = \"header\"\nheader = \"x-user\"\ntype = \"U\"\nid = \"u-{identity}\"\n",
    );
}

#[test]
fn two_principal_sources_of_one_type_must_both_keep_the_whole_identity() {
    let two_domains = |id: &str| {
        format!(
            "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://acme.example/ns/{{namespace}}/sa/{{name}}\"\nid = {id:?}\n\
             [[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://partner.example/ns/{{namespace}}/sa/{{name}}\"\nid = {id:?}\n"
        )
    };
    // `prod/admin` under either trust domain would be one principal.
    let (key, message) = refusal(&two_domains("{namespace}/{name}"));
    assert_eq!(key, "ext_authz.principal[1].type");
    assert!(
        message.starts_with("is ext_authz.principal[0]'s type too"),
        "{message}"
    );
    assert_eq!(compiled(&two_domains("{identity}")).principals.len(), 2);
    // A header of the same type could say `prod/admin` as well.
    let (key, _) = refusal(
        "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://td/ns/{namespace}/sa/{name}\"\nid = \"{namespace}/{name}\"\n\
         [[principal]]\nfrom = \"header\"\nheader = \"x-service\"\ntype = \"S\"\n",
    );
    assert_eq!(key, "ext_authz.principal[1].type");
    // Different types never meet.
    compiled(
        "[[principal]]\nfrom = \"mtls\"\ntype = \"S\"\nmatch = \"spiffe://td/ns/{namespace}/sa/{name}\"\nid = \"{namespace}/{name}\"\n\
         [[principal]]\nfrom = \"jwt\"\ntype = \"U\"\n",
    );
}

#[test]
fn grpc_method_actions_no_route_produces_are_found_for_the_upgrade_warning() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "forbid(principal, action == Action::\"/pkg.Admin/Delete\", resource);\n\
         permit(principal, action in [Action::\"read\", Action::\"/docs/x\"], resource);\n\
         permit(principal, action == Other::Action::\"/pkg.Admin/Get\", resource);\n\
         permit(principal, action, resource) when { action == Action::\"/pkg.Admin/List\" };\n",
    )
    .unwrap();
    let snapshot = crate::policy::load_dir(dir.path(), &crate::policy::LoadOptions::default())
        .unwrap()
        .snapshot;
    // Check once gave a gRPC call the action `/pkg.Admin/Delete` by itself.
    assert_eq!(
        ExtAuthz::default().unmapped_grpc_actions(&snapshot),
        ["/pkg.Admin/Delete", "/pkg.Admin/List"]
    );
    // A check at startup: it must not build Cedar's set of every policy, which a large
    // directory builds only when a call needs it.
    assert!(snapshot.policies_if_built().is_none());
    for (routes, unmapped) in [
        (
            "[[routes]]\npath = \"/{service}/{rpc}\"\naction = \"{path}\"\n",
            &[][..],
        ),
        (
            "[[routes]]\npath = \"/pkg.Admin/Delete\"\naction = \"/pkg.Admin/Delete\"\n",
            &["/pkg.Admin/List"][..],
        ),
    ] {
        assert_eq!(
            compiled(routes).unmapped_grpc_actions(&snapshot),
            unmapped,
            "{routes}"
        );
    }
}
