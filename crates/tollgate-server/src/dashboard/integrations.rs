//! Integrations: the catalogue ("All"), the organisation's ("Connected") and
//! the workspaces' own ("Workspace-Created") integrations, the three-step
//! Create Integration flow, and an integration's detail (edit, rotate
//! credentials, workspaces with budgets, models, delete).

use super::html::{self, budget_bar, cell, copy, csrf, field_error, input, select, str_of, tabs, Errors, Nav};
use super::{enc, Dash, OrPage, PageResult, Post, Signed};
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tollgate_core::admission::LimitOwner;
use tollgate_core::catalogue::{self, ProviderSpec};
use tollgate_core::ids::{IntegrationId, WorkspaceId};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListQuery {
    tab: Option<String>,
    q: Option<String>,
}

pub async fn list(State(d): State<Dash>, Signed(s): Signed, Query(q): Query<ListQuery>) -> PageResult {
    let tab = q.tab.as_deref().unwrap_or("all");
    let link = |t: &str| d.url(&format!("/ui/integrations?tab={t}"));
    let tab_bar = tabs(&[
        ("All", link("all"), tab == "all"),
        ("Connected", link("connected"), tab == "connected"),
        ("Workspace-Created", link("workspace"), tab == "workspace"),
    ]);
    let body = match tab {
        "connected" | "workspace" => {
            let kind = if tab == "connected" {
                "organisation"
            } else {
                "workspace"
            };
            let list = d
                .get(&s, &format!("/v1/integrations?type={kind}&page_size=1000"))
                .await
                .or_page(&d)?;
            integrations_table(&d, &list)
        }
        _ => {
            let needle = q.q.as_deref().unwrap_or("").trim().to_lowercase();
            let found: Vec<&ProviderSpec> = catalogue::providers()
                .iter()
                .filter(|p| {
                    needle.is_empty()
                        || p.name.to_lowercase().contains(&needle)
                        || p.id.to_lowercase().contains(&needle)
                })
                .collect();
            html! {
                form.search method="get" role="search" action=(d.url("/ui/integrations")) {
                    input type="hidden" name="tab" value="all";
                    label for="f-q" { "Search providers" }
                    input #f-q type="search" name="q" value=(q.q.as_deref().unwrap_or(""));
                    button type="submit" { "Search" }
                }
                @if found.is_empty() { p { "No provider matches." } }
                ul.cards {
                    @for p in found {
                        li.card {
                            h2 { (p.name) }
                            p.muted { (p.id) " · " (serde_json::to_value(p.protocol).ok().as_ref().map(cell).unwrap_or_default()) }
                            a.button href=(d.url(&format!("/ui/integrations/new?provider={}", enc(&p.id)))) {
                                "Connect" span.vh { " " (p.name) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html::page(
        &d,
        &s,
        "Integrations",
        Nav::Integrations,
        html! {
            p { a.button.primary href=(d.url("/ui/integrations/new")) { "Create integration" } }
            (tab_bar)
            (body)
        },
    ))
}

fn integrations_table(d: &Dash, list: &Value) -> Markup {
    let rows = list.get("data").and_then(Value::as_array).cloned().unwrap_or_default();
    html! {
        @if rows.is_empty() { p { "No integrations here yet." } }
        @else {
            div.scroll { table {
                thead { tr { th { "Name" } th { "Provider" } th { "Slug" } th { "Status" } th { "Workspaces" } th { "Models" } th { "Key" } } }
                tbody {
                    @for i in &rows {
                        tr {
                            td { a href=(d.url(&format!("/ui/integrations/{}", enc(str_of(i, "slug"))))) { (str_of(i, "name")) } }
                            td { (str_of(i, "ai_provider_id")) }
                            td { code { (str_of(i, "slug")) } }
                            td { (str_of(i, "status")) }
                            td { (cell(&i["workspace_count"])) }
                            td { @if i["allow_all_models"].as_bool() == Some(true) { "All models" } @else { "Selected models" } }
                            td { (cell(&i["masked_key"])) }
                        }
                    }
                }
            } }
        }
    }
}

fn stepper(current: u8) -> Markup {
    let steps = [
        (1, "Details and credentials"),
        (2, "Workspace provisioning"),
        (3, "Model provisioning"),
    ];
    html! {
        ol.steps aria-label="Create integration steps" {
            @for (n, label) in steps {
                @if n == current { li aria-current="step" { "Step " (n) " of 3: " (label) } }
                @else { li { "Step " (n) ": " (label) } }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewQuery {
    provider: Option<String>,
}

pub async fn new_page(State(d): State<Dash>, Signed(s): Signed, Query(q): Query<NewQuery>) -> PageResult {
    Ok(step_one(
        &d,
        &s,
        q.provider.as_deref(),
        &super::Form::default(),
        &Errors::default(),
    ))
}

/// The credential fields of a provider, and `custom_host`, which every
/// provider takes.
fn fields_of(spec: &ProviderSpec) -> Vec<(String, bool, bool)> {
    let mut out: Vec<(String, bool, bool)> = spec
        .credential_fields
        .iter()
        .map(|f| (f.name.clone(), f.secret, f.required))
        .collect();
    if !out.iter().any(|(n, _, _)| n == "custom_host") {
        out.push(("custom_host".into(), false, false));
    }
    out
}

fn field_label(name: &str) -> String {
    match name {
        "key" => "API key".into(),
        "custom_host" => "Custom host (base URL)".into(),
        other => {
            let mut s = other.replace('_', " ");
            if let Some(f) = s.get_mut(0..1) {
                f.make_ascii_uppercase();
            }
            s
        }
    }
}

/// Fields whose value is JSON (lists and objects), typed in a textarea.
fn is_json_field(name: &str) -> bool {
    name.ends_with("_config") || name.ends_with("_json")
}

fn credential_inputs(
    spec: &ProviderSpec,
    form: &super::Form,
    errors: &Errors,
    current: Option<&Map<String, Value>>,
) -> Markup {
    html! {
        @for (name, secret, required) in fields_of(spec) {
            @let label = field_label(&name);
            @if secret {
                @let masked = current.and_then(|c| c.get(&format!("masked_{name}"))).and_then(Value::as_str);
                @let hint = match (masked, required) {
                    (Some(m), _) => format!("Stored as {m}. Leave blank to keep it; type a new value to rotate it."),
                    (None, true) => "Required. Stored encrypted; never shown again.".to_owned(),
                    (None, false) => "Optional. Stored encrypted; never shown again.".to_owned(),
                };
                (input(&label, &name, "password", None, errors, Some(&hint)))
            } @else if is_json_field(&name) {
                @let value = form.get(&name).map(str::to_owned).or_else(|| current.and_then(|c| c.get(&name)).map(|v| v.to_string()));
                div.field {
                    label for=(format!("f-{name}")) { (label) }
                    textarea id=(format!("f-{name}")) name=(name) rows="4" aria-describedby=(format!("f-{name}-hint")) { (value.unwrap_or_default()) }
                    p.hint id=(format!("f-{name}-hint")) { "JSON" @if required { ", required" } "." }
                    (field_error(errors, &name))
                }
            } @else {
                @let value = form.get(&name).map(str::to_owned).or_else(|| current.and_then(|c| c.get(&name)).and_then(Value::as_str).map(str::to_owned));
                (input(&label, &name, if name == "custom_host" { "url" } else { "text" }, value.as_deref(), errors, required.then_some("Required.")))
            }
        }
    }
}

fn step_one(
    d: &Dash,
    s: &super::session::Session,
    provider: Option<&str>,
    form: &super::Form,
    errors: &Errors,
) -> Response {
    let spec = provider.and_then(catalogue::provider);
    let options: Vec<(String, String)> = catalogue::providers()
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    let body = html! {
        (stepper(1))
        @match spec {
            None => {
                form method="get" action=(d.url("/ui/integrations/new")) {
                    (select("Provider", "provider", &options, provider))
                    button type="submit" { "Next: credentials" }
                }
            }
            Some(spec) => {
                p { "Provider: " strong { (spec.name) } " · " a href=(d.url("/ui/integrations/new")) { "Choose another provider" } }
                (errors.banner())
                form method="post" action=(d.url("/ui/integrations/new")) {
                    (csrf(s))
                    input type="hidden" name="ai_provider_id" value=(spec.id);
                    fieldset {
                        legend { "Details" }
                        (input("Name", "name", "text", form.get("name"), errors, None))
                        (input("Slug", "slug", "text", form.get("slug"), errors, Some("Letters, digits, - and _. Generated from the name when blank. Models are called as @slug/model.")))
                        (input("Description", "description", "text", form.get("description"), errors, None))
                    }
                    fieldset {
                        legend { "Credentials" }
                        (credential_inputs(spec, form, errors, None))
                    }
                    @if let Some(w) = &s.workspace_id { p.note { "This integration will belong to your workspace (" (w) ")." } }
                    button.primary type="submit" { "Create and continue" }
                }
            }
        }
    };
    html::page(d, s, "Create integration", Nav::Integrations, body)
}

/// The credential part of a create or update body, from the form:
/// `(key, configurations)`; blank fields are left out.
fn credentials_body(spec: &ProviderSpec, form: &super::Form) -> (Option<String>, Map<String, Value>) {
    let mut key = None;
    let mut cfg = Map::new();
    for (name, _, _) in fields_of(spec) {
        let Some(v) = form.get(&name) else { continue };
        if name == "key" {
            key = Some(v.to_owned());
        } else if is_json_field(&name) {
            // Unparsable JSON goes as text: the API names the field.
            cfg.insert(name, serde_json::from_str(v).unwrap_or_else(|_| json!(v)));
        } else {
            cfg.insert(name, json!(v));
        }
    }
    (key, cfg)
}

fn error_fields(spec: &ProviderSpec) -> Vec<String> {
    let mut f: Vec<String> = vec!["name".into(), "slug".into(), "description".into()];
    f.extend(fields_of(spec).into_iter().map(|(n, _, _)| n));
    f
}

pub async fn create(State(d): State<Dash>, Post { session: s, form }: Post) -> PageResult {
    let provider = form.get("ai_provider_id").unwrap_or("").to_owned();
    let Some(spec) = catalogue::provider(&provider) else {
        return Ok(step_one(
            &d,
            &s,
            None,
            &form,
            &Errors::top("Choose a provider from the catalogue."),
        ));
    };
    let (key, cfg) = credentials_body(spec, &form);
    let mut body = json!({
        "name": form.get("name").unwrap_or(""),
        "ai_provider_id": provider,
        "configurations": cfg,
    });
    for f in ["slug", "description"] {
        if let Some(v) = form.get(f) {
            body[f] = json!(v);
        }
    }
    if let Some(k) = key {
        body["key"] = json!(k);
    }
    if let Some(w) = &s.workspace_id {
        body["workspace_id"] = json!(w);
    }
    match d.json(&s, Method::POST, "/v1/integrations", Some(&body)).await {
        Ok(created) => Ok(Redirect::to(&d.url(&format!(
            "/ui/integrations/{}/workspaces?step=2",
            enc(str_of(&created, "slug"))
        )))
        .into_response()),
        Err(e) if e.status == 401 => Err(super::PageError::Api(d.clone(), e)),
        Err(e) => {
            let fields = error_fields(spec);
            let names: Vec<&str> = fields.iter().map(String::as_str).collect();
            let mut errors = Errors::from_api(&e, &names);
            if e.message.contains("name is required") || e.message.contains("missing field `name`") {
                errors = Errors {
                    top: None,
                    fields: vec![("name".into(), e.message.clone())],
                };
            }
            let mut r = step_one(&d, &s, Some(&provider), &form, &errors);
            *r.status_mut() = axum::http::StatusCode::from_u16(e.status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
            Ok(r)
        }
    }
}

fn detail_tabs(d: &Dash, slug: &str, active: &str) -> Markup {
    let base = format!("/ui/integrations/{}", enc(slug));
    tabs(&[
        ("Details", d.url(&base), active == "details"),
        (
            "Workspaces",
            d.url(&format!("{base}/workspaces")),
            active == "workspaces",
        ),
        ("Models", d.url(&format!("{base}/models")), active == "models"),
    ])
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DetailQuery {
    saved: Option<String>,
    step: Option<String>,
}

pub async fn detail(
    State(d): State<Dash>,
    Signed(s): Signed,
    Path(slug): Path<String>,
    Query(q): Query<DetailQuery>,
) -> PageResult {
    let i = d
        .get(&s, &format!("/v1/integrations/{}", enc(&slug)))
        .await
        .or_page(&d)?;
    Ok(detail_page(
        &d,
        &s,
        &i,
        &super::Form::default(),
        &Errors::default(),
        q.saved.is_some(),
    ))
}

fn detail_page(
    d: &Dash,
    s: &super::session::Session,
    i: &Value,
    form: &super::Form,
    errors: &Errors,
    saved: bool,
) -> Response {
    let slug = str_of(i, "slug");
    let spec = catalogue::provider(str_of(i, "ai_provider_id"));
    let cfg = i.get("configurations").and_then(Value::as_object);
    let title = format!("Integration {}", str_of(i, "name"));
    let body = html! {
        (detail_tabs(d, slug, "details"))
        @if saved { p.note role="status" { "Saved." } }
        dl.facts {
            dt { "Slug" } dd { (copy(slug, "slug")) }
            dt { "Provider" } dd { (str_of(i, "ai_provider_id")) }
            dt { "Status" } dd { (str_of(i, "status")) }
            dt { "Endpoint" } dd { (str_of(i, "endpoint_type")) }
            dt { "Key" } dd { (cell(&i["masked_key"])) }
            dt { "Workspaces" } dd { (cell(&i["workspace_count"])) }
            dt { "Owner" } dd { @match i["workspace_id"].as_str() { Some(w) => { "workspace " (w) }, None => "organisation" } }
        }
        h2 { "Edit details and rotate credentials" }
        (errors.banner())
        form method="post" action=(d.url(&format!("/ui/integrations/{}", enc(slug)))) {
            (csrf(s))
            (input("Name", "name", "text", form.get("name").or(i["name"].as_str()), errors, None))
            (input("Description", "description", "text", form.get("description").or(i["description"].as_str()), errors, None))
            @if let Some(spec) = spec { (credential_inputs(spec, form, errors, cfg)) }
            button type="submit" { "Save changes" }
        }
        h2 { "Delete" }
        form.danger method="post" action=(d.url(&format!("/ui/integrations/{}/delete", enc(slug)))) {
            (csrf(s))
            (input("Type the slug to confirm deletion", "confirm", "text", None, errors, Some("Deleting removes the integration from every workspace at once.")))
            button.danger type="submit" { "Delete integration" }
        }
    };
    html::page(d, s, &title, Nav::Integrations, body)
}

pub async fn update(State(d): State<Dash>, Path(slug): Path<String>, Post { session: s, form }: Post) -> PageResult {
    let path = format!("/v1/integrations/{}", enc(&slug));
    let i = d.get(&s, &path).await.or_page(&d)?;
    let mut body = json!({"name": form.get("name").unwrap_or(""), "description": form.get("description")});
    let mut names: Vec<String> = vec!["name".into(), "description".into()];
    if let Some(spec) = catalogue::provider(str_of(&i, "ai_provider_id")) {
        let (key, cfg) = credentials_body(spec, &form);
        body["configurations"] = Value::Object(cfg);
        if let Some(k) = key {
            body["key"] = json!(k);
        }
        names = error_fields(spec);
    }
    match d.json(&s, Method::PUT, &path, Some(&body)).await {
        Ok(_) => Ok(Redirect::to(&d.url(&format!("/ui/integrations/{}?saved=1", enc(&slug)))).into_response()),
        Err(e) if e.status == 401 => Err(super::PageError::Api(d.clone(), e)),
        Err(e) => {
            let n: Vec<&str> = names.iter().map(String::as_str).collect();
            Ok(detail_page(&d, &s, &i, &form, &Errors::from_api(&e, &n), false))
        }
    }
}

pub async fn delete(State(d): State<Dash>, Path(slug): Path<String>, Post { session: s, form }: Post) -> PageResult {
    let path = format!("/v1/integrations/{}", enc(&slug));
    if form.get("confirm") != Some(slug.as_str()) {
        let i = d.get(&s, &path).await.or_page(&d)?;
        let errors = Errors {
            top: None,
            fields: vec![(
                "confirm".into(),
                format!("Type {slug} exactly to delete this integration."),
            )],
        };
        return Ok(detail_page(&d, &s, &i, &super::Form::default(), &errors, false));
    }
    d.json(&s, Method::DELETE, &path, None).await.or_page(&d)?;
    Ok(Redirect::to(&d.url("/ui/integrations?tab=connected")).into_response())
}

// ------------------------------------------------------------- workspaces

/// The workspaces a session may see: all for an organisation key, its own
/// for a workspace key (as the API lists them).
pub async fn visible_workspaces(d: &Dash, s: &super::session::Session) -> Result<Vec<Value>, super::ApiError> {
    let v = d.get(s, "/v1/admin/workspaces?page_size=1000").await?;
    Ok(v.get("data").and_then(Value::as_array).cloned().unwrap_or_default())
}

/// Budgets with their consumption, from the analytics summary; empty when
/// the key may not read analytics.
pub async fn budgets(d: &Dash, s: &super::session::Session, query: &str) -> Vec<Value> {
    match d.get(s, &format!("/v1/analytics/summary{query}")).await {
        Ok(v) => v
            .pointer("/data/budgets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

pub async fn rate_usage(d: &Dash, s: &super::session::Session, query: &str) -> Vec<Value> {
    match d.get(s, &format!("/v1/analytics/summary{query}")).await {
        Ok(v) => v
            .pointer("/data/rate_limits")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

pub async fn workspaces_page(
    State(d): State<Dash>,
    Signed(s): Signed,
    Path(slug): Path<String>,
    Query(q): Query<DetailQuery>,
) -> PageResult {
    workspaces_view(&d, &s, &slug, q.step.is_some(), q.saved.is_some(), &Errors::default()).await
}

async fn workspaces_view(
    d: &Dash,
    s: &super::session::Session,
    slug: &str,
    step: bool,
    saved: bool,
    errors: &Errors,
) -> PageResult {
    let i = d.get(s, &format!("/v1/integrations/{}", enc(slug))).await.or_page(d)?;
    let access = d
        .get(s, &format!("/v1/integrations/{}/workspaces", enc(slug)))
        .await
        .or_page(d)?;
    let workspaces = visible_workspaces(d, s).await.or_page(d)?;
    let budgets = budgets(d, s, "").await;
    let integration_id = str_of(&i, "id");
    let entries = access
        .get("workspaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let entry = |ws: &str| entries.iter().find(|e| str_of(e, "id") == ws).cloned();
    let all = access
        .pointer("/global_workspace_access/enabled")
        .and_then(Value::as_bool)
        == Some(true);
    let budget_opts = opts(&[("cost", "Cost (US dollars)"), ("tokens", "Tokens")]);
    let reset_opts = opts(&[("", "No reset"), ("weekly", "Weekly"), ("monthly", "Monthly")]);
    let rate_type_opts = opts(&[("requests", "Requests"), ("tokens", "Tokens")]);
    let unit_opts = opts(&[("rpm", "per minute"), ("rph", "per hour"), ("rpd", "per day")]);
    let body = html! {
        @if step { (stepper(2)) } @else { (detail_tabs(d, slug, "workspaces")) }
        @if saved { p.note role="status" { "Saved." } }
        (errors.banner())
        form method="post" action=(d.url(&format!("/ui/integrations/{}/workspaces", enc(slug)))) {
            (csrf(s))
            @if step { input type="hidden" name="step" value="2"; }
            fieldset {
                legend { "Workspace access" }
                label.inline { input type="radio" name="access" value="all" checked[all]; " All workspaces (including ones created later)" }
                label.inline { input type="radio" name="access" value="specific" checked[!all]; " Specific workspaces" }
            }
            p.note { strong { "Budgets and rate limits cannot be edited once set." } " To change one, revoke the workspace's access and provision it again, or reset its usage." }
            @for w in &workspaces {
                @let id = str_of(w, "id");
                @let name = str_of(w, "name");
                @let e = entry(id);
                @let enabled = e.as_ref().and_then(|e| e["enabled"].as_bool()) == Some(true);
                @let usage = e.as_ref().map(|e| e["usage_limits"].clone()).unwrap_or(Value::Null);
                @let rate = e.as_ref().map(|e| e["rate_limits"].clone()).unwrap_or(Value::Null);
                fieldset.workspace {
                    legend { (name) }
                    input type="hidden" name="known" value=(id);
                    @if enabled { input type="hidden" name="was_enabled" value=(id); }
                    label.inline { input type="checkbox" name="ws" value=(id) checked[enabled]; " Provision " (name) }
                    @if usage.is_object() {
                        @let limit_id = LimitOwner::IntegrationWorkspace {
                            integration: IntegrationId::new(integration_id),
                            workspace: WorkspaceId::new(id),
                        }.key();
                        @let b = budgets.iter().find(|b| str_of(b, "limit_id") == limit_id);
                        @let unit = if str_of(&usage, "type") == "tokens" { "tokens" } else { "USD" };
                        (budget_bar(&format!("Budget for {name}"), b.and_then(|b| b["consumed"].as_f64()).unwrap_or(0.0),
                            usage["credit_limit"].as_f64().unwrap_or(0.0), unit, usage["next_usage_reset_at"].as_str()))
                        p.muted { "Alert at " (cell(&usage["alert_threshold"])) " · reset " (cell(&usage["periodic_reset"])) }
                        button type="submit" name="reset" value=(id) { "Reset usage" span.vh { " for " (name) } }
                    } @else {
                        div.row {
                            (select(&format!("Budget type for {name}"), &format!("budget_type.{id}"), &budget_opts, None))
                            (input(&format!("Budget limit for {name}"), &format!("credit_limit.{id}"), "number", None, errors, None))
                            (input(&format!("Alert threshold for {name}"), &format!("alert_threshold.{id}"), "number", None, errors, None))
                            (select(&format!("Periodic reset for {name}"), &format!("periodic_reset.{id}"), &reset_opts, None))
                        }
                    }
                    @if rate.is_object() {
                        p { "Rate limit: " (cell(&rate["value"])) " " (cell(&rate["type"])) " " (cell(&rate["unit"])) }
                    } @else {
                        div.row {
                            (select(&format!("Rate limit type for {name}"), &format!("rate_type.{id}"), &rate_type_opts, None))
                            (select(&format!("Rate limit unit for {name}"), &format!("rate_unit.{id}"), &unit_opts, None))
                            (input(&format!("Rate limit for {name}"), &format!("rate_value.{id}"), "number", None, errors, None))
                        }
                    }
                    @if enabled { button.danger type="submit" name="revoke" value=(id) { "Revoke" span.vh { " " (name) } } }
                }
            }
            button.primary type="submit" { @if step { "Save and continue" } @else { "Save workspaces" } }
        }
    };
    Ok(html::page(
        d,
        s,
        &format!("Integration {}", str_of(&i, "name")),
        Nav::Integrations,
        body,
    ))
}

fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(v, l)| ((*v).to_owned(), (*l).to_owned())).collect()
}

/// A number typed in a form as JSON; text that is no number is sent as is,
/// for the API to name.
fn number(v: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(v)
        .map(Value::Number)
        .unwrap_or_else(|_| json!(v))
}

pub async fn save_workspaces(
    State(d): State<Dash>,
    Path(slug): Path<String>,
    Post { session: s, form }: Post,
) -> PageResult {
    let step = form.has("step");
    let body = if let Some(id) = form.get("reset") {
        json!({"workspaces": [{"id": id, "enabled": true, "reset_usage": true}]})
    } else if let Some(id) = form.get("revoke") {
        json!({"workspaces": [{"id": id, "enabled": false}]})
    } else {
        let checked: Vec<&str> = form.all("ws").collect();
        let was: Vec<&str> = form.all("was_enabled").collect();
        let mut entries = Vec::new();
        for id in form.all("known") {
            let enabled = checked.contains(&id);
            if !enabled && !was.contains(&id) {
                continue;
            }
            let mut e = json!({"id": id, "enabled": enabled});
            if let Some(limit) = form.get(&format!("credit_limit.{id}")) {
                let mut u = json!({
                    "type": form.get(&format!("budget_type.{id}")).unwrap_or("cost"),
                    "credit_limit": number(limit),
                    "periodic_reset": form.get(&format!("periodic_reset.{id}")),
                });
                if let Some(a) = form.get(&format!("alert_threshold.{id}")) {
                    u["alert_threshold"] = number(a);
                }
                e["usage_limits"] = u;
            }
            if let Some(v) = form.get(&format!("rate_value.{id}")) {
                e["rate_limits"] = json!({
                    "type": form.get(&format!("rate_type.{id}")).unwrap_or("requests"),
                    "unit": form.get(&format!("rate_unit.{id}")).unwrap_or("rpm"),
                    "value": number(v),
                });
            }
            entries.push(e);
        }
        let mut body = json!({"workspaces": entries});
        if s.is_org() {
            body["global_workspace_access"] = json!({"enabled": form.get("access") == Some("all")});
        }
        body
    };
    let path = format!("/v1/integrations/{}/workspaces", enc(&slug));
    match d.json(&s, Method::PUT, &path, Some(&body)).await {
        Ok(_) if step && !form.has("reset") && !form.has("revoke") => {
            Ok(Redirect::to(&d.url(&format!("/ui/integrations/{}/models?step=3", enc(&slug)))).into_response())
        }
        Ok(_) => Ok(Redirect::to(&d.url(&format!(
            "/ui/integrations/{}/workspaces?saved=1{}",
            enc(&slug),
            if step { "&step=2" } else { "" }
        )))
        .into_response()),
        Err(e) if e.status == 401 => Err(super::PageError::Api(d.clone(), e)),
        Err(e) => workspaces_view(&d, &s, &slug, step, false, &Errors::top(e.message)).await,
    }
}

// ------------------------------------------------------------------ models

pub async fn models_page(
    State(d): State<Dash>,
    Signed(s): Signed,
    Path(slug): Path<String>,
    Query(q): Query<DetailQuery>,
) -> PageResult {
    models_view(
        &d,
        &s,
        &slug,
        q.step.is_some(),
        q.saved.is_some(),
        &super::Form::default(),
        &Errors::default(),
    )
    .await
}

async fn models_view(
    d: &Dash,
    s: &super::session::Session,
    slug: &str,
    step: bool,
    saved: bool,
    form: &super::Form,
    errors: &Errors,
) -> PageResult {
    let i = d.get(s, &format!("/v1/integrations/{}", enc(slug))).await.or_page(d)?;
    let models = d
        .get(s, &format!("/v1/integrations/{}/models", enc(slug)))
        .await
        .or_page(d)?;
    let allow_all = models["allow_all_models"].as_bool() == Some(true);
    let entries = models
        .get("models")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let enabled: Vec<&str> = entries
        .iter()
        .filter(|m| m["enabled"].as_bool() == Some(true) && !allow_all)
        .map(|m| str_of(m, "slug"))
        .collect();
    let snap = d.state.snapshot();
    let mut names: Vec<String> = snap
        .prices
        .models_of(str_of(&i, "ai_provider_id"))
        .map(str::to_owned)
        .collect();
    for m in &entries {
        let slug = str_of(m, "slug").to_owned();
        if !names.contains(&slug) {
            names.push(slug);
        }
    }
    names.sort();
    let custom: Vec<&Value> = entries
        .iter()
        .filter(|m| m["is_custom"].as_bool() == Some(true))
        .collect();
    let body = html! {
        @if step { (stepper(3)) } @else { (detail_tabs(d, slug, "models")) }
        @if saved { p.note role="status" { "Saved." } }
        (errors.banner())
        form method="post" action=(d.url(&format!("/ui/integrations/{}/models", enc(slug)))) {
            (csrf(s))
            @if step { input type="hidden" name="step" value="3"; }
            @for m in &enabled { input type="hidden" name="was_enabled" value=(m); }
            fieldset {
                legend { "Model access" }
                label.inline { input type="radio" name="allow_all" value="yes" checked[allow_all]; " Allow all models" }
                label.inline { input type="radio" name="allow_all" value="no" checked[!allow_all]; " Only the models picked below" }
            }
            fieldset {
                legend { "Models" }
                div.field {
                    label for="f-model-filter" { "Search models" }
                    input #f-model-filter type="search" data-filter="#model-list";
                }
                ul.picklist #model-list {
                    @for m in &names {
                        li { label { input type="checkbox" name="model" value=(m) checked[enabled.contains(&m.as_str())]; " " (m) } }
                    }
                }
            }
            @if !custom.is_empty() {
                h2 { "Custom models" }
                div.scroll { table {
                    thead { tr { th { "Model" } th { "Base model" } th { "Custom host" } th { "Pricing (cents per token)" } } }
                    tbody { @for m in &custom { tr {
                        td { (str_of(m, "slug")) } td { (cell(&m["base_model_slug"])) }
                        td { (cell(m.pointer("/configurations/custom_host").unwrap_or(&Value::Null))) }
                        td { (cell(m.pointer("/pricing_config/pay_as_you_go/request_token/price").unwrap_or(&Value::Null))) " in · "
                             (cell(m.pointer("/pricing_config/pay_as_you_go/response_token/price").unwrap_or(&Value::Null))) " out" }
                    } } }
                } }
            }
            fieldset {
                legend { "Add a custom model or a custom price" }
                p.hint { "A custom or fine-tuned model served by this integration (or a standard model's negotiated price). Prices are US cents per token: 0.00025 cents = $2.50 per million tokens." }
                (input("Custom model slug", "custom_slug", "text", form.get("custom_slug"), errors, None))
                (input("Base model", "base_model_slug", "text", form.get("base_model_slug"), errors, Some("The catalogue model it is priced and tokenized like.")))
                (input("Model custom host", "model_custom_host", "url", form.get("model_custom_host"), errors, None))
                div.field {
                    label for="f-custom_headers" { "Custom headers" }
                    textarea #f-custom_headers name="custom_headers" rows="2" aria-describedby="f-custom_headers-hint" { (form.get("custom_headers").unwrap_or("")) }
                    p.hint #f-custom_headers-hint { "One per line, as name: value." }
                    (field_error(errors, "custom_headers"))
                }
                (input("Input price (cents per token)", "input_price", "text", form.get("input_price"), errors, None))
                (input("Output price (cents per token)", "output_price", "text", form.get("output_price"), errors, None))
            }
            button.primary type="submit" { @if step { "Finish" } @else { "Save models" } }
        }
    };
    Ok(html::page(
        d,
        s,
        &format!("Integration {}", str_of(&i, "name")),
        Nav::Integrations,
        body,
    ))
}

pub async fn save_models(
    State(d): State<Dash>,
    Path(slug): Path<String>,
    Post { session: s, form }: Post,
) -> PageResult {
    let step = form.has("step");
    let allow_all = form.get("allow_all") == Some("yes");
    let checked: Vec<&str> = form.all("model").collect();
    let mut models: Vec<Value> = checked.iter().map(|m| json!({"slug": m, "enabled": true})).collect();
    for m in form.all("was_enabled") {
        if !checked.contains(&m) {
            models.push(json!({"slug": m, "enabled": false}));
        }
    }
    if let Some(custom) = form.get("custom_slug") {
        let mut headers = Map::new();
        for line in form.get("custom_headers").unwrap_or("").lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(':') {
                Some((k, v)) => {
                    headers.insert(k.trim().to_owned(), json!(v.trim()));
                }
                None => {
                    let e = Errors {
                        top: None,
                        fields: vec![("custom_headers".into(), format!("'{line}' is not name: value"))],
                    };
                    return models_view(&d, &s, &slug, step, false, &form, &e).await;
                }
            }
        }
        let mut m = json!({"slug": custom, "enabled": true});
        if let Some(base) = form.get("base_model_slug") {
            m["is_custom"] = json!(true);
            m["is_finetune"] = json!(true);
            m["base_model_slug"] = json!(base);
        }
        let host = form.get("model_custom_host");
        if host.is_some() || !headers.is_empty() {
            m["is_custom"] = json!(true);
            m["configurations"] = json!({"custom_host": host, "custom_headers": headers});
        }
        match (form.get("input_price"), form.get("output_price")) {
            (None, None) => {}
            (i, o) => {
                m["pricing_config"] = json!({"type": "static", "pay_as_you_go": {
                    "request_token": {"price": number(i.unwrap_or("0"))},
                    "response_token": {"price": number(o.unwrap_or("0"))},
                }});
            }
        }
        models.push(m);
    }
    let body = json!({"allow_all_models": allow_all, "models": models});
    let path = format!("/v1/integrations/{}/models", enc(&slug));
    match d.json(&s, Method::PUT, &path, Some(&body)).await {
        Ok(_) if step => Ok(Redirect::to(&d.url(&format!("/ui/integrations/{}?saved=1", enc(&slug)))).into_response()),
        Ok(_) => Ok(Redirect::to(&d.url(&format!("/ui/integrations/{}/models?saved=1", enc(&slug)))).into_response()),
        Err(e) if e.status == 401 => Err(super::PageError::Api(d.clone(), e)),
        Err(e) => {
            let mut errors = Errors::from_api(&e, &["base_model_slug", "custom_host", "custom_headers", "price"]);
            // The form spells the model's host and prices its own way.
            for (f, to) in [("custom_host", "model_custom_host"), ("price", "input_price")] {
                for entry in &mut errors.fields {
                    if entry.0 == f {
                        entry.0 = to.into();
                    }
                }
            }
            models_view(&d, &s, &slug, step, false, &form, &errors).await
        }
    }
}
