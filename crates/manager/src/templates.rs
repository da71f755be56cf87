//! The catalogue of app templates: ready `compose.yml` + `service.yml` pairs an
//! operator starts a deployment from. Some ship with the binary
//! (`crates/manager/templates/*.toml`); an operator adds their own as TOML files in
//! `<data_dir>/templates/`, read at start and on `POST /api/v1/templates/refresh`.
//! Every template's files are checked like a deployment's: one that does not
//! check is left out and reported.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::deployments::check_files;

/// The templates shipped with the binary.
const BUILTIN: &[(&str, &str)] = &[
    (
        "static-site.toml",
        include_str!("../templates/static-site.toml"),
    ),
    ("worker.toml", include_str!("../templates/worker.toml")),
    ("nginx.toml", include_str!("../templates/nginx.toml")),
    (
        "busybox-httpd.toml",
        include_str!("../templates/busybox-httpd.toml"),
    ),
    ("postgres.toml", include_str!("../templates/postgres.toml")),
    ("redis.toml", include_str!("../templates/redis.toml")),
    (
        "wordpress.toml",
        include_str!("../templates/wordpress.toml"),
    ),
];

/// Largest template file read from the templates directory.
const MAX_TEMPLATE_BYTES: u64 = 2 * 1024 * 1024;

/// One template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Template {
    /// 1 to 64 of a-z, 0-9 and '-'.
    pub id: String,
    pub name: String,
    /// `web`, `database`, `cms`, `process`, … (free text, lower case).
    pub category: String,
    pub description: String,
    /// The `compose.yml` a deployment made from it gets.
    pub compose: String,
    /// Its `service.yml`.
    #[serde(default)]
    pub service: String,
    /// `builtin` or `local` (from the templates directory).
    #[serde(default = "builtin")]
    pub source: String,
}

fn builtin() -> String {
    "builtin".into()
}

/// A template file that was left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TemplateProblem {
    pub file: String,
    pub error: String,
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

/// Reads and checks one template file.
pub fn parse(file: &str, text: &str, source: &str) -> Result<Template, TemplateProblem> {
    let problem = |error: String| TemplateProblem {
        file: file.into(),
        error,
    };
    let mut t: Template = toml::from_str(text).map_err(|e| problem(e.to_string()))?;
    t.source = source.into();
    t.compose = t.compose.trim_start_matches('\n').to_string();
    t.service = t.service.trim_start_matches('\n').to_string();
    t.category = t.category.trim().to_lowercase();
    if !valid_id(&t.id) {
        return Err(problem(format!(
            "id {:?} must be 1 to 64 of a-z, 0-9 and '-'",
            t.id
        )));
    }
    if t.name.trim().is_empty() || t.category.is_empty() {
        return Err(problem("name and category must not be empty".into()));
    }
    check_files(&t.compose, &t.service).map_err(|e| match e {
        crate::deployments::DeployError::Invalid(problems) => problem(
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        other => problem(other.to_string()),
    })?;
    Ok(t)
}

/// The templates in force.
pub struct Catalogue {
    dir: PathBuf,
    templates: RwLock<Vec<Template>>,
}

impl Catalogue {
    /// The shipped templates and those of `<data_dir>/templates`.
    pub fn load(data_dir: &Path) -> Self {
        let c = Catalogue {
            dir: data_dir.join("templates"),
            templates: RwLock::new(Vec::new()),
        };
        let problems = c.refresh();
        for p in problems {
            tracing::warn!(file = %p.file, error = %p.error, "a template was left out");
        }
        c
    }

    /// Reads the catalogue again; the files left out, and why. A local template
    /// with the id of a shipped one replaces it.
    pub fn refresh(&self) -> Vec<TemplateProblem> {
        let mut problems = Vec::new();
        let mut all: Vec<Template> = Vec::new();
        for (file, text) in BUILTIN {
            match parse(file, text, "builtin") {
                Ok(t) => all.push(t),
                Err(p) => problems.push(p),
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        for path in files {
            let file = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = match std::fs::metadata(&path) {
                Ok(m) if m.len() > MAX_TEMPLATE_BYTES => Err(format!(
                    "{} bytes; at most {MAX_TEMPLATE_BYTES} are read",
                    m.len()
                )),
                _ => std::fs::read_to_string(&path).map_err(|e| e.to_string()),
            };
            match text.and_then(|t| parse(&file, &t, "local").map_err(|p| p.error)) {
                Ok(t) => {
                    all.retain(|o| o.id != t.id);
                    all.push(t);
                }
                Err(error) => problems.push(TemplateProblem { file, error }),
            }
        }
        all.sort_by(|a, b| (&a.category, &a.id).cmp(&(&b.category, &b.id)));
        *self.templates.write().unwrap_or_else(|p| p.into_inner()) = all;
        problems
    }

    /// Every template, by category then id.
    pub fn all(&self) -> Vec<Template> {
        self.templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn get(&self, id: &str) -> Option<Template> {
        self.all().into_iter().find(|t| t.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_template_checks() {
        for (file, text) in BUILTIN {
            let t = parse(file, text, "builtin").unwrap_or_else(|p| panic!("{file}: {}", p.error));
            assert_eq!(format!("{}.toml", t.id), *file, "file named after its id");
        }
    }

    #[test]
    fn local_templates_are_checked_and_may_replace_shipped_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let t = dir.path().join("templates");
        std::fs::create_dir(&t).expect("mkdir");
        std::fs::write(
            t.join("mine.toml"),
            "id = \"worker\"\nname = \"My worker\"\ncategory = \"Process\"\ndescription = \"d\"\ncompose = \"services:\\n  w:\\n    command: [\\\"true\\\"]\\n\"\n",
        )
        .expect("write");
        std::fs::write(
            t.join("broken.toml"),
            "id = \"broken\"\nname = \"B\"\ncategory = \"x\"\ndescription = \"d\"\ncompose = \"services:\\n  w:\\n    ports: [\\\"99999\\\"]\\n\"\n",
        )
        .expect("write");
        std::fs::write(t.join("junk.toml"), "not = [toml").expect("write");
        let c = Catalogue::load(dir.path());
        let mine = c.get("worker").expect("worker");
        assert_eq!(
            (
                mine.name.as_str(),
                mine.source.as_str(),
                mine.category.as_str()
            ),
            ("My worker", "local", "process")
        );
        assert!(c.get("broken").is_none());
        let problems = c.refresh();
        let files: Vec<&str> = problems.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(files, ["broken.toml", "junk.toml"], "{problems:?}");
        assert!(problems[0].error.contains("compose.yml:3"), "{problems:?}");
        assert_eq!(c.all().len(), BUILTIN.len());
    }
}
