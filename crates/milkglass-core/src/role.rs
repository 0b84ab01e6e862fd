use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// A user's role on the whole server.
///
/// `admin` may do everything. `owner` may create projects and tables (and owns what
/// it creates). `scientist` queries guarded tables. `viewer` only reads projects it
/// has been added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Owner,
    Scientist,
    Viewer,
}

/// A user's role within one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRole {
    Viewer,
    Owner,
}

macro_rules! string_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "unknown value {other:?}; expected one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(Role { Admin => "admin", Owner => "owner", Scientist => "scientist", Viewer => "viewer" });
string_enum!(ProjectRole { Viewer => "viewer", Owner => "owner" });
