use crate::role::string_enum;
use crate::{Invalid, InvalidResult, check_name};
use serde::{Deserialize, Serialize};
use std::{collections::HashSet, fmt, str::FromStr};

/// Who may load a project's raw data, and from where. See docs/PRIVACY.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// URLs anyone can load; the browser loads them directly.
    #[default]
    Public,
    /// Files uploaded to milkglass's own store, served through signed URLs.
    Hosted,
    /// The user's URLs, fetched once into the hosted store.
    Mirrored,
    /// milkglass never fetches raw data; only the user's browser does.
    Anonymous,
}

string_enum!(AccessMode { Public => "public", Hosted => "hosted", Mirrored => "mirrored", Anonymous => "anonymous" });

/// One class of a project's label class map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEntry {
    pub id: u32,
    pub name: String,
    /// RGB colour used to draw the class.
    #[serde(default = "default_color")]
    pub color: [u8; 3],
    /// The model's class this one maps onto for metrics (many-to-one); defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

fn default_color() -> [u8; 3] {
    [128, 128, 128]
}

/// A project's classes; ids and names are unique.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClassMap(pub Vec<ClassEntry>);

impl ClassMap {
    pub fn validate(&self, field: &str) -> InvalidResult<()> {
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for (i, class) in self.0.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if class.name.is_empty() || class.name.len() > 256 || class.name.chars().any(char::is_control) {
                return Err(Invalid::new(
                    format!("{at}.name"),
                    "must be 1 to 256 characters without control characters",
                ));
            }
            if !ids.insert(class.id) {
                return Err(Invalid::new(format!("{at}.id"), format!("class id {} appears twice", class.id)));
            }
            if !names.insert(class.name.as_str()) {
                return Err(Invalid::new(format!("{at}.name"), format!("class name {:?} appears twice", class.name)));
            }
        }
        Ok(())
    }

    pub fn by_name(&self, name: &str) -> Option<&ClassEntry> {
        self.0.iter().find(|c| c.name == name)
    }

    pub fn by_id(&self, id: u32) -> Option<&ClassEntry> {
        self.0.iter().find(|c| c.id == id)
    }

    /// Adds classes to the map. Class maps only grow: labels already stored refer to
    /// existing ids, so an entry may not be removed or renamed, only recoloured.
    pub fn merge(&mut self, update: &ClassMap, field: &str) -> InvalidResult<()> {
        for (i, class) in update.0.iter().enumerate() {
            match self.by_id(class.id) {
                Some(existing) if existing.name != class.name => {
                    return Err(Invalid::new(
                        format!("{field}[{i}].name"),
                        format!("class {} is already named {:?}; classes cannot be renamed", class.id, existing.name),
                    ));
                }
                Some(_) => {
                    let existing = self.0.iter_mut().find(|c| c.id == class.id).expect("found above");
                    existing.color = class.color;
                }
                None => self.0.push(class.clone()),
            }
        }
        self.validate(field)
    }
}

/// What a client sends to create a project.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    pub name: String,
    #[serde(default)]
    pub classes: ClassMap,
    #[serde(default)]
    pub access_mode: AccessMode,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl ProjectSpec {
    pub fn validate(&self) -> InvalidResult<()> {
        check_name("name", &self.name)?;
        self.classes.validate("classes")
    }
}

/// Labeled datasets carry ground truth; unlabeled ones are pools (e.g. for collection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    #[default]
    Labeled,
    Unlabeled,
}

string_enum!(DatasetKind { Labeled => "labeled", Unlabeled => "unlabeled" });

/// What a client sends to create a dataset (or an inference set, which has no kind).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub name: String,
    #[serde(default)]
    pub kind: DatasetKind,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Dimension of frame embeddings; fixed by the first upload when not given.
    #[serde(default)]
    pub frame_embedding_dim: Option<usize>,
    /// Dimension of label (crop) embeddings; fixed by the first upload when not given.
    #[serde(default)]
    pub label_embedding_dim: Option<usize>,
}

impl DatasetSpec {
    pub fn validate(&self) -> InvalidResult<()> {
        check_name("name", &self.name)?;
        for (field, dim) in
            [("frame_embedding_dim", self.frame_embedding_dim), ("label_embedding_dim", self.label_embedding_dim)]
        {
            if let Some(dim) = dim
                && !crate::EMBEDDING_DIM_RANGE.contains(&dim)
            {
                return Err(Invalid::new(field, "must be between 2 and 12000"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for ClassEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.id)
    }
}

impl FromStr for ClassMap {
    type Err = serde_json::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s)
    }
}
