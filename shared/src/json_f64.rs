//! Serde helper for `f64` fields that may be NaN or infinite.
//!
//! JSON has no NaN: serde_json writes it as `null` and then refuses to read
//! `null` back as a number. Fields marked `#[serde(with = "crate::json_f64")]`
//! write non-finite values as `null` and read `null` as NaN, so statistics
//! that are undefined (a confidence interval from one seed, the loss of a
//! diverged run) survive a round trip.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An `f64` that serialises like a `json_f64` field, for use inside
/// collections (`Vec<F64>`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct F64(pub f64);

impl Serialize for F64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for F64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<F64, D::Error> {
        deserialize(d).map(F64)
    }
}

/// Writes finite values as numbers, others as `null`.
pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() { s.serialize_f64(*v) } else { s.serialize_none() }
}

/// Reads numbers, and `null` as NaN.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct T {
        #[serde(with = "crate::json_f64")]
        x: f64,
    }

    #[test]
    fn nan_roundtrips_as_null() {
        let s = serde_json::to_string(&T { x: f64::NAN }).unwrap();
        assert_eq!(s, r#"{"x":null}"#);
        assert!(serde_json::from_str::<T>(&s).unwrap().x.is_nan());
        assert_eq!(serde_json::from_str::<T>(r#"{"x":1.5}"#).unwrap().x, 1.5);
    }
}
