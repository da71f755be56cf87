//! The app template catalogue over the API: list (by category), categories, one
//! template, its files (to start a deployment from), and a re-read of the
//! operator's templates directory.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use fleetgate_core::user::Role;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthContext;
use crate::error::{ApiError, ApiResult};
use crate::extract::QueryParams;
use crate::templates::{Template, TemplateProblem};
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct TemplateSummary {
    pub id: String,
    pub name: String,
    pub category: String,
    pub description: String,
    /// `builtin` or `local`.
    pub source: String,
    /// The services of its compose file.
    pub services: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<TemplateSummary>,
    pub total: usize,
}

fn summary(t: &Template) -> TemplateSummary {
    let services = crate::deployments::check_files(&t.compose, &t.service)
        .map(|(c, _)| c.services.into_iter().map(|s| s.name).collect())
        .unwrap_or_default();
    TemplateSummary {
        id: t.id.clone(),
        name: t.name.clone(),
        category: t.category.clone(),
        description: t.description.clone(),
        source: t.source.clone(),
        services,
    }
}

#[utoipa::path(get, path = "/api/v1/templates", operation_id = "list_templates", tag = "deployments",
    params(("category" = Option<String>, Query, description = "Only this category")),
    responses((status = 200, description = "Templates, by category then id", body = TemplateList)))]
pub async fn list(
    State(state): State<AppState>,
    _auth: AuthContext,
    q: QueryParams,
) -> ApiResult<Json<TemplateList>> {
    let category = q.text("category").map(str::to_lowercase);
    let items: Vec<TemplateSummary> = state
        .templates
        .all()
        .iter()
        .filter(|t| category.as_ref().is_none_or(|c| *c == t.category))
        .map(summary)
        .collect();
    Ok(Json(TemplateList {
        total: items.len(),
        items,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Category {
    pub name: String,
    pub count: usize,
}

#[derive(Serialize, ToSchema)]
pub struct CategoryList {
    pub items: Vec<Category>,
}

#[utoipa::path(get, path = "/api/v1/templates/categories", operation_id = "template_categories", tag = "deployments",
    responses((status = 200, description = "Categories and how many templates each holds", body = CategoryList)))]
pub async fn categories(State(state): State<AppState>, _auth: AuthContext) -> Json<CategoryList> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in state.templates.all() {
        *counts.entry(t.category).or_default() += 1;
    }
    Json(CategoryList {
        items: counts
            .into_iter()
            .map(|(name, count)| Category { name, count })
            .collect(),
    })
}

fn find(state: &AppState, id: &str) -> ApiResult<Template> {
    state
        .templates
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("template {id}")))
}

#[utoipa::path(get, path = "/api/v1/templates/{id}", operation_id = "get_template", tag = "deployments",
    params(("id" = String, Path, description = "Template id")),
    responses((status = 200, description = "The template with its files", body = Template)))]
pub async fn get(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<Template>> {
    Ok(Json(find(&state, &id)?))
}

#[derive(Serialize, ToSchema)]
pub struct TemplateFiles {
    /// `compose.yml`.
    pub compose: String,
    /// `service.yml`.
    pub service: String,
}

#[utoipa::path(get, path = "/api/v1/templates/{id}/compose", operation_id = "template_compose", tag = "deployments",
    params(("id" = String, Path, description = "Template id")),
    responses((status = 200, description = "The files a deployment made from it starts with", body = TemplateFiles)))]
pub async fn compose(
    State(state): State<AppState>,
    _auth: AuthContext,
    Path(id): Path<String>,
) -> ApiResult<Json<TemplateFiles>> {
    let t = find(&state, &id)?;
    Ok(Json(TemplateFiles {
        compose: t.compose,
        service: t.service,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct RefreshResult {
    /// Templates in the catalogue now.
    pub loaded: usize,
    /// Files of the templates directory left out, and why.
    pub problems: Vec<TemplateProblem>,
}

#[utoipa::path(post, path = "/api/v1/templates/refresh", operation_id = "refresh_templates", tag = "deployments",
    responses((status = 200, description = "The catalogue was read again", body = RefreshResult)))]
pub async fn refresh(
    State(state): State<AppState>,
    auth: AuthContext,
) -> ApiResult<Json<RefreshResult>> {
    auth.require(Role::Operator)?;
    let s = state.clone();
    let problems = tokio::task::spawn_blocking(move || s.templates.refresh())
        .await
        .map_err(|e| ApiError::internal("template refresh", e))?;
    Ok(Json(RefreshResult {
        loaded: state.templates.all().len(),
        problems,
    }))
}
