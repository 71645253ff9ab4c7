//! Grid values — a `[user]` key's value, a cell's axis value — between
//! their domain form (`serde_json::Value`, as the grid reads TOML) and the
//! wire's `GridValue`. Integers and floating-point numbers stay apart.

use serde_json::Value;

use crate::FieldError;
use crate::v1::{GridList, GridNull, GridTable, GridValue, grid_value::Kind};

/// A value to the wire.
pub fn to_wire(v: &Value) -> GridValue {
    let kind = match v {
        Value::Null => Kind::Null(GridNull {}),
        Value::Bool(b) => Kind::Flag(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Kind::Integer(i),
            (None, Some(u)) => Kind::Unsigned(u),
            (None, None) => Kind::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(t) => Kind::Text(t.clone()),
        Value::Array(a) => Kind::List(GridList { items: a.iter().map(to_wire).collect() }),
        Value::Object(o) => {
            Kind::Table(GridTable { entries: o.iter().map(|(k, x)| (k.clone(), to_wire(x))).collect() })
        }
    };
    GridValue { kind: Some(kind) }
}

/// A value from the wire; `field` names it in errors (an element of a list
/// or table is named below it). Every value must have a kind, and numbers
/// must be finite (JSON has no others).
pub fn from_wire(field: &str, v: GridValue) -> Result<Value, FieldError> {
    let err = |problem: String| FieldError::new(field, problem);
    Ok(match v.kind {
        Some(Kind::Flag(b)) => Value::Bool(b),
        Some(Kind::Integer(i)) => Value::from(i),
        Some(Kind::Unsigned(u)) => Value::from(u),
        Some(Kind::Number(x)) => {
            serde_json::Number::from_f64(x).map(Value::Number).ok_or_else(|| err(format!("{x} is not finite")))?
        }
        Some(Kind::Text(t)) => Value::String(t),
        Some(Kind::List(l)) => Value::Array(
            l.items
                .into_iter()
                .enumerate()
                .map(|(i, x)| from_wire(&format!("{field}[{i}]"), x))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::Table(t)) => Value::Object(
            t.entries
                .into_iter()
                .map(|(k, x)| {
                    let x = from_wire(&format!("{field}.{k}"), x)?;
                    Ok((k, x))
                })
                .collect::<Result<_, FieldError>>()?,
        ),
        Some(Kind::Null(GridNull {})) => Value::Null,
        None => return Err(err("a value without a kind".into())),
    })
}

/// A map of named values from the wire (`prefix.name` in errors, or just
/// `name` with an empty prefix), in name order.
pub fn map_from_wire(
    prefix: &str,
    m: impl IntoIterator<Item = (String, GridValue)>,
) -> Result<std::collections::BTreeMap<String, Value>, FieldError> {
    m.into_iter()
        .map(|(k, v)| {
            let field = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            Ok((k, from_wire(&field, v)?))
        })
        .collect()
}

/// A map of named values to the wire.
pub fn map_to_wire<'a>(
    m: impl IntoIterator<Item = (&'a String, &'a Value)>,
) -> std::collections::HashMap<String, GridValue> {
    m.into_iter().map(|(k, v)| (k.clone(), to_wire(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_every_kind_cross_and_3_stays_apart_from_3_0() {
        let v = serde_json::json!({
            "width": 3, "scale": 3.0, "negative": -2, "huge": u64::MAX, "name": "x", "on": true,
            "nothing": null, "layers": [1, [2.5, "y"]], "opt": {"inner": {"flag": false}, "empty": []},
        });
        let back = from_wire("v", to_wire(&v)).unwrap();
        assert_eq!(back, v);
        assert!(back["width"].is_i64() && back["scale"].is_f64() && back["huge"].is_u64());
    }

    #[test]
    fn an_unreadable_value_is_named_down_to_its_element() {
        let number = |x| GridValue { kind: Some(Kind::Number(x)) };
        let list = GridValue { kind: Some(Kind::List(GridList { items: vec![number(1.0), number(f64::NAN)] })) };
        let e = from_wire("user.widths", list).unwrap_err();
        assert_eq!(e.field, "user.widths[1]");
        assert!(e.problem.contains("not finite"), "{e}");
        let table = GridValue {
            kind: Some(Kind::Table(GridTable { entries: [("a".to_string(), GridValue { kind: None })].into() })),
        };
        assert_eq!(map_from_wire("user", [("opt".to_string(), table)]).unwrap_err().field, "user.opt.a");
    }
}
