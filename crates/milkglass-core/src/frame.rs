use crate::metadata::{metadata_from_json, parse_timestamp};
use crate::name::check_id;
use crate::role::string_enum;
use crate::{ClassMap, Invalid, InvalidResult, Label, Metadata, check_embedding, check_finite};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashSet;
use std::{fmt, str::FromStr};

/// One frame: a moment captured by one or more sensors, with its metadata and
/// (inline, optionally) its ground-truth labels and embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub frame_id: String,
    #[serde(default, deserialize_with = "deserialize_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    #[serde(default)]
    pub sensors: Vec<Sensor>,
    #[serde(default, deserialize_with = "deserialize_metadata")]
    pub metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<Geo>,
    /// Ground-truth labels; when present they replace the frame's labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<Label>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

/// Latitude and longitude in degrees (EPSG:4326).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geo {
    pub lat: f64,
    pub lon: f64,
}

/// What a sensor recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    Image,
    ImageOverlay,
    PointCloud,
    Text,
    Audio,
    Video,
}

string_enum!(SensorKind {
    Image => "image", ImageOverlay => "image_overlay", PointCloud => "point_cloud",
    Text => "text", Audio => "audio", Video => "video",
});

/// One sensor of a frame. `url` points at the raw data; for `text` sensors it is the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensor {
    #[serde(default = "default_sensor_id")]
    pub sensor_id: String,
    pub kind: SensorKind,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// When this sensor captured its data, where it differs from the frame's time.
    #[serde(default, deserialize_with = "deserialize_timestamp", skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
}

fn default_sensor_id() -> String {
    "DEFAULT".to_string()
}

/// Accepts `http(s)://`, `s3://`, `gs://` URLs and hosted object keys (`hosted:KEY`).
///
/// Only the syntax is checked here; whether the server may fetch a URL is the
/// fetcher's decision, made against its SSRF rules at fetch time.
pub fn check_data_url(field: &str, url: &str) -> InvalidResult<()> {
    DataUrl::parse(field, url).map(|_| ())
}

/// The forms a data URL (a frame's image, a sensor's file, a mask) takes, told apart once,
/// here, for every crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataUrl<'a> {
    /// `http://` or `https://`.
    Web(&'a str),
    /// `s3://bucket/key` or `gs://bucket/key`: a bucket path, which needs credentials or a
    /// signer to be read.
    Bucket { scheme: BucketScheme, url: &'a str },
    /// `hosted:KEY`: a file in milkglass's own hosted store.
    Hosted { key: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketScheme {
    S3,
    Gs,
}

impl BucketScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketScheme::S3 => "s3",
            BucketScheme::Gs => "gs",
        }
    }
}

impl<'a> DataUrl<'a> {
    /// The hosted store's key, when `url` is a valid `hosted:KEY`.
    pub fn hosted_key(url: &'a str) -> Option<&'a str> {
        match DataUrl::parse("url", url) {
            Ok(DataUrl::Hosted { key }) => Some(key),
            _ => None,
        }
    }

    /// Checks `url` (`field` names it in the error) and tells its form.
    pub fn parse(field: &str, url: &'a str) -> InvalidResult<DataUrl<'a>> {
        if url.len() > 8192 {
            return Err(Invalid::new(field, "URL is longer than 8192 bytes"));
        }
        if url.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Invalid::new(field, "URL must not contain spaces or control characters"));
        }
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| Invalid::new(field, "expected a URL: http(s)://, s3://, gs:// or hosted:KEY"))?;
        let lower = scheme.to_ascii_lowercase();
        match lower.as_str() {
            "http" | "https" | "s3" | "gs" => {
                let host = rest
                    .strip_prefix("//")
                    .ok_or_else(|| Invalid::new(field, format!("{scheme}: URLs start with {scheme}://")))?;
                if host.is_empty() || host.starts_with('/') {
                    return Err(Invalid::new(field, "URL has no host or bucket"));
                }
                Ok(match lower.as_str() {
                    "s3" => DataUrl::Bucket { scheme: BucketScheme::S3, url },
                    "gs" => DataUrl::Bucket { scheme: BucketScheme::Gs, url },
                    _ => DataUrl::Web(url),
                })
            }
            "hosted" if scheme != "hosted" => Err(Invalid::new(field, "write the hosted: scheme in lower case")),
            "hosted" => match crate::paths::key_refusal(rest) {
                // The rule the hosted store serves by, so that no frame names a key it would refuse.
                Some(why) => Err(Invalid::new(
                    field,
                    format!("hosted keys are relative paths without '..' or empty parts ({why})"),
                )),
                None => Ok(DataUrl::Hosted { key: rest }),
            },
            other => Err(Invalid::new(
                field,
                format!("unsupported scheme {other:?}; use http(s)://, s3://, gs:// or hosted:KEY"),
            )),
        }
    }
}

impl Frame {
    /// Checks the frame and its inline labels. `embedding_dim` is the dataset's frame
    /// embedding dimension when it is already fixed.
    pub fn validate(
        &self,
        classes: &ClassMap,
        embedding_dim: Option<usize>,
        label_embedding_dim: Option<usize>,
    ) -> InvalidResult<()> {
        check_id("frame_id", &self.frame_id)?;
        let mut sensor_ids = HashSet::new();
        for (i, sensor) in self.sensors.iter().enumerate() {
            let at = format!("sensors[{i}]");
            check_id(&format!("{at}.sensor_id"), &sensor.sensor_id)?;
            if !sensor_ids.insert(sensor.sensor_id.as_str()) {
                return Err(Invalid::new(
                    format!("{at}.sensor_id"),
                    format!("sensor id {:?} appears twice", sensor.sensor_id),
                ));
            }
            if sensor.kind != SensorKind::Text {
                check_data_url(&format!("{at}.url"), &sensor.url)?;
            } else if sensor.url.len() > 1 << 20 {
                return Err(Invalid::new(format!("{at}.url"), "text is longer than 1 MiB"));
            }
        }
        if let Some(geo) = self.geo {
            check_finite("geo.lat", geo.lat)?;
            check_finite("geo.lon", geo.lon)?;
            if !(-90.0..=90.0).contains(&geo.lat) {
                return Err(Invalid::new("geo.lat", "latitude must be between -90 and 90"));
            }
            if !(-180.0..=180.0).contains(&geo.lon) {
                return Err(Invalid::new("geo.lon", "longitude must be between -180 and 180"));
            }
        }
        if let Some(embedding) = &self.embedding {
            check_embedding("embedding", embedding)?;
            check_dim("embedding", embedding.len(), embedding_dim)?;
        }
        if let Some(labels) = &self.labels {
            let mut ids = HashSet::new();
            for (i, label) in labels.iter().enumerate() {
                let at = format!("labels[{i}]");
                if let Some(frame_id) = &label.frame_id
                    && frame_id != &self.frame_id
                {
                    return Err(Invalid::new(
                        format!("{at}.frame_id"),
                        "an inline label belongs to the frame it is in",
                    ));
                }
                label.validate(classes, false, label_embedding_dim).map_err(|e| e.within(&at))?;
                if !ids.insert(label.label_id.as_str()) {
                    return Err(Invalid::new(
                        format!("{at}.label_id"),
                        format!("label id {:?} appears twice", label.label_id),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a vector's length against the dimension the dataset already has.
pub(crate) fn check_dim(field: &str, len: usize, expected: Option<usize>) -> InvalidResult<()> {
    match expected {
        Some(dim) if dim != len => Err(Invalid::new(
            field,
            format!("embedding has dimension {len}, but this dataset's embeddings have dimension {dim}"),
        )),
        _ => Ok(()),
    }
}

fn deserialize_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_timestamp("timestamp", &t).map_err(|e| serde::de::Error::custom(e.message))).transpose()
}

fn deserialize_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
    let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    metadata_from_json("metadata", &map).map_err(serde::de::Error::custom)
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "frame {:?}", self.frame_id)
    }
}

impl FromStr for Frame {
    type Err = serde_json::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        for ok in ["http://x/a.png", "https://b.example/a?sig=1", "s3://bucket/k", "gs://b/k", "hosted:imgs/1.png"] {
            check_data_url("url", ok).unwrap();
        }
        for bad in ["file:///etc/passwd", "ftp://x", "hosted:../x", "hosted:/abs", "http:/x", "no-scheme", "http://a b"]
        {
            assert!(check_data_url("url", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn frame_round_trip_and_unknown_fields() {
        let f: Frame = r#"{"frame_id":"f1","sensors":[{"kind":"image","url":"http://h/1.png"}],"metadata":{"w":"sun"}}"#
            .parse()
            .unwrap();
        assert_eq!(f.sensors[0].sensor_id, "DEFAULT");
        f.validate(&ClassMap::default(), None, None).unwrap();
        let err = r#"{"frame_id":"f1","colour":1}"#.parse::<Frame>().unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn embedding_dimension_must_match() {
        let f: Frame = r#"{"frame_id":"f1","embedding":[1,2,3]}"#.parse().unwrap();
        assert!(f.validate(&ClassMap::default(), Some(3), None).is_ok());
        let err = f.validate(&ClassMap::default(), Some(4), None).unwrap_err();
        assert_eq!(err.field, "embedding");
    }
}

#[cfg(test)]
mod data_url_tests {
    use super::{BucketScheme, DataUrl};

    #[test]
    fn each_form_is_told_apart_once() {
        assert_eq!(DataUrl::parse("url", "https://x.org/a.png").unwrap(), DataUrl::Web("https://x.org/a.png"));
        assert!(matches!(DataUrl::parse("url", "S3://b/k").unwrap(), DataUrl::Bucket { scheme: BucketScheme::S3, .. }));
        assert!(matches!(DataUrl::parse("url", "gs://b/k").unwrap(), DataUrl::Bucket { scheme: BucketScheme::Gs, .. }));
        assert_eq!(DataUrl::hosted_key("hosted:dir/a.png"), Some("dir/a.png"));
        for not_hosted in ["hosted:../a", "HOSTED:a.png", "https://x/hosted:a", "hosted:"] {
            assert_eq!(DataUrl::hosted_key(not_hosted), None, "{not_hosted}");
        }
        let e = DataUrl::parse("frame.url", "HOSTED:a.png").unwrap_err();
        assert_eq!(e.field, "frame.url");
        assert!(e.message.contains("lower case"), "{}", e.message);
    }
}
