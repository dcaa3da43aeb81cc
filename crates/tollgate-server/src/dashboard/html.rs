//! The layout and the pieces every screen is built from. maud escapes every
//! interpolated value, so API data (names, messages) is always text.

use super::session::Session;
use super::{ApiError, Dash};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Integrations,
    Workspaces,
    Keys,
    Logs,
    Analytics,
    Audit,
}

fn head(d: &Dash, title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Tollgate" }
            link rel="stylesheet" href=(d.url("/ui/assets/app.css"));
            script src=(d.url("/ui/assets/app.js")) defer {}
        }
    }
}

/// A full page for a signed-in session.
pub fn page(d: &Dash, s: &Session, title: &str, active: Nav, body: Markup) -> Response {
    let link = |nav: Nav, href: String, label: &str| {
        html! {
            @if nav == active {
                a href=(href) aria-current="page" { (label) }
            } @else {
                a href=(href) { (label) }
            }
        }
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(d, title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href=(d.url("/ui/integrations")) { "Tollgate" }
                    nav aria-label="Main" {
                        (link(Nav::Integrations, d.url("/ui/integrations"), "Integrations"))
                        @match &s.workspace_id {
                            None => (link(Nav::Workspaces, d.url("/ui/workspaces"), "Workspaces")),
                            Some(w) => (link(Nav::Workspaces, d.url(&format!("/ui/workspaces/{}", super::enc(w))), "My workspace")),
                        }
                        @if s.is_org() {
                            (link(Nav::Keys, d.url("/ui/keys"), "API keys"))
                        }
                        (link(Nav::Logs, d.url("/ui/logs"), "Logs"))
                        (link(Nav::Analytics, d.url("/ui/analytics"), "Analytics"))
                        @if s.is_org() {
                            (link(Nav::Audit, d.url("/ui/audit"), "Audit log"))
                        }
                    }
                    form.signout method="post" action=(d.url("/ui/sign-out")) {
                        (csrf(s))
                        span.who { (s.key_name) @if let Some(w) = &s.workspace_id { " · " (w) } }
                        button type="submit" { "Sign out" }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    markup.into_response()
}

pub fn sign_in(d: &Dash, note: Option<&str>, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(d, "Sign in"))
            body.signin {
                main #main {
                    h1 { "Sign in to Tollgate" }
                    @if let Some(n) = note { p.note role="status" { (n) } }
                    form method="post" action=(d.url("/ui/sign-in")) {
                        div.field {
                            label for="f-api_key" { "API key" }
                            input #f-api_key type="password" name="api_key" required autocomplete="off"
                                aria-describedby=[error.map(|_| "f-api_key-err")];
                            @if let Some(e) = error { p.error #f-api_key-err role="alert" { (e) } }
                            p.hint { "An organisation admin key, or a workspace key to see that workspace only. The key stays on the server; your browser keeps only a session cookie." }
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

pub fn error_page(d: &Dash, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(d, "Error"))
            body {
                main #main {
                    h1 { "Something went wrong" }
                    p.error role="alert" { (message) }
                    p { a href=(d.url("/ui/integrations")) { "Back to the dashboard" } }
                }
            }
        }
    }
}

pub fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="_csrf" value=(s.csrf.as_ref()); }
}

/// A form's errors: API messages placed beside the field they name, or at
/// the top of the form.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub top: Option<String>,
    pub fields: Vec<(String, String)>,
}

impl Errors {
    /// Places `e` beside the first of `fields` its message names.
    pub fn from_api(e: &ApiError, fields: &[&str]) -> Errors {
        let msg = &e.message;
        let named = fields.iter().find(|f| mentions(msg, f));
        match named {
            Some(f) => Errors {
                top: None,
                fields: vec![((*f).to_owned(), msg.clone())],
            },
            None => Errors {
                top: Some(msg.clone()),
                fields: Vec::new(),
            },
        }
    }

    pub fn top(msg: impl Into<String>) -> Errors {
        Errors {
            top: Some(msg.into()),
            fields: Vec::new(),
        }
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(f, _)| f == name).map(|(_, m)| m.as_str())
    }

    pub fn banner(&self) -> Markup {
        html! { @if let Some(t) = &self.top { p.error.banner role="alert" { (t) } } }
    }
}

/// Does `msg` name `field` as a whole word (`key` is not named by `api_key`)?
fn mentions(msg: &str, field: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    msg.match_indices(field).any(|(i, _)| {
        let before = msg[..i].chars().next_back();
        let after = msg[i + field.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

/// The error beside field `name`, if any (for controls built by hand).
pub fn field_error(errors: &Errors, name: &str) -> Markup {
    html! { @if let Some(e) = errors.field(name) { p.error id=(format!("f-{name}-err")) role="alert" { (e) } } }
}

/// One labelled input; `kind` is the input type.
pub fn input(label: &str, name: &str, kind: &str, value: Option<&str>, errors: &Errors, hint: Option<&str>) -> Markup {
    let id = format!("f-{name}");
    let err = errors.field(name);
    let err_id = format!("{id}-err");
    let hint_id = format!("{id}-hint");
    let described: Vec<&str> = err
        .map(|_| err_id.as_str())
        .into_iter()
        .chain(hint.map(|_| hint_id.as_str()))
        .collect();
    let described = (!described.is_empty()).then(|| described.join(" "));
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) name=(name) type=(kind) value=[value] aria-describedby=[described]
                aria-invalid=[err.map(|_| "true")] autocomplete="off";
            @if let Some(h) = hint { p.hint id=(hint_id) { (h) } }
            @if let Some(e) = err { p.error id=(err_id) role="alert" { (e) } }
        }
    }
}

/// A labelled select of (value, label) options.
pub fn select(label: &str, name: &str, options: &[(String, String)], selected: Option<&str>) -> Markup {
    let id = format!("f-{name}");
    html! {
        div.field {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                @for (v, l) in options {
                    option value=(v) selected[selected == Some(v.as_str())] { (l) }
                }
            }
        }
    }
}

/// A row of tab links.
pub fn tabs(items: &[(&str, String, bool)]) -> Markup {
    html! {
        nav.tabs aria-label="Tabs" {
            @for (label, href, active) in items {
                @if *active { a href=(href) aria-current="page" { (label) } }
                @else { a href=(href) { (label) } }
            }
        }
    }
}

/// A button that copies `text` (app.js); without script, the text is
/// selectable beside it.
pub fn copy(text: &str, what: &str) -> Markup {
    html! {
        code.copyable { (text) }
        " "
        button.copy type="button" data-copy=(text) aria-label=(format!("Copy {what}")) { "Copy" }
    }
}

/// A value as short text for a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A budget's consumption as a meter with its figures.
pub fn budget_bar(label: &str, consumed: f64, limit: f64, unit: &str, next_reset: Option<&str>) -> Markup {
    html! {
        div.budget {
            p {
                (label) ": " strong { (fmt_num(consumed)) } " of " (fmt_num(limit)) " " (unit) " consumed"
                @if let Some(n) = next_reset { " · next reset " (n) }
            }
            meter min="0" max=(limit) value=(consumed) aria-label=(format!("{label}: {} of {} {unit}", fmt_num(consumed), fmt_num(limit))) {}
        }
    }
}

/// A number for people: integers plainly, others with up to 6 decimals.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The top of a chart's axis, rounded to what a reader needs.
fn axis_label(v: f64) -> String {
    if v >= 10.0 {
        fmt_num(v.round())
    } else {
        let digits = (-v.log10().floor()).max(0.0) as usize + 1;
        format!("{v:.digits$}")
    }
}

/// A line chart of one or more series over time, as SVG (no script).
pub fn chart(title: &str, labels: &[String], series: &[(&str, Vec<f64>)], unit: &str) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 200.0;
    const PAD_L: f64 = 56.0;
    const PAD_B: f64 = 24.0;
    const PAD_T: f64 = 10.0;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let n = labels.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            PAD_L + (W - PAD_L) / 2.0
        } else {
            PAD_L + (W - PAD_L - 8.0) * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| PAD_T + (H - PAD_T - PAD_B) * (1.0 - v / top);
    let summary = series
        .iter()
        .map(|(name, v)| format!("{name}: total {}", fmt_num(v.iter().sum())))
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        figure.chart {
            figcaption { (title) @if !unit.is_empty() { " (" (unit) ")" } }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(format!("{title}. {summary}")) {
                line.axis x1=(PAD_L) y1=(H - PAD_B) x2=(W) y2=(H - PAD_B) {}
                line.axis x1=(PAD_L) y1=(PAD_T) x2=(PAD_L) y2=(H - PAD_B) {}
                text.tick x=(PAD_L - 4.0) y=(PAD_T + 8.0) text-anchor="end" { (axis_label(top)) }
                text.tick x=(PAD_L - 4.0) y=(H - PAD_B) text-anchor="end" { "0" }
                @if let Some(first) = labels.first() { text.tick x=(PAD_L) y=(H - 6.0) { (first) } }
                @if labels.len() > 1 { @if let Some(last) = labels.last() { text.tick x=(W - 4.0) y=(H - 6.0) text-anchor="end" { (last) } } }
                @for (k, (name, values)) in series.iter().enumerate() {
                    @let points = values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect::<Vec<_>>().join(" ");
                    polyline class=(format!("s{k}")) points=(points) { title { (name) } }
                    @for (i, v) in values.iter().enumerate() {
                        @if *v > 0.0 {
                            circle class=(format!("s{k}")) cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*v))) r="2.5" {
                                title { (name) " " (labels.get(i).map(String::as_str).unwrap_or("")) ": " (fmt_num(*v)) }
                            }
                        }
                    }
                }
            }
            @if series.len() > 1 {
                ul.legend { @for (k, (name, _)) in series.iter().enumerate() { li class=(format!("s{k}")) { (name) } } }
            }
        }
    }
}

/// Raw markup that is known safe (constant text only).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_whole_fields() {
        assert!(mentions("name is required", "name"));
        assert!(!mentions("display_name is required", "name"));
        assert!(mentions("slug 'a b' must match ^[a-zA-Z0-9_-]+$", "slug"));
        let e = ApiError {
            status: 400,
            message: "custom_host must be an http(s) URL".into(),
        };
        let errs = Errors::from_api(&e, &["name", "custom_host"]);
        assert_eq!(errs.field("custom_host"), Some("custom_host must be an http(s) URL"));
        assert!(errs.top.is_none());
        let other = Errors::from_api(&e, &["name"]);
        assert_eq!(other.top.as_deref(), Some("custom_host must be an http(s) URL"));
    }

    #[test]
    fn numbers_read_plainly() {
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(0.000125), "0.000125");
        assert_eq!(fmt_num(1.5), "1.5");
    }

    #[test]
    fn charts_escape_and_draw() {
        let m = chart("<b>", &["a".into(), "b".into()], &[("x", vec![1.0, 2.0])], "").into_string();
        assert!(m.contains("&lt;b&gt;"));
        assert!(m.contains("polyline"));
    }
}
