//! Serde for the shared enums by their stable names ([`Reason::as_str`],
//! [`Direction::as_str`], [`Action::as_str`]): JSON, the control socket and
//! metric labels carry `"drop_default"`, `"egress"`, `"allow"`, so userspace
//! keeps the enums themselves and a name that no variant has is an error
//! where it is read, not a string that compares unequal somewhere later.

use core::fmt;

use serde::{de, Deserializer, Serializer};

use crate::{Action, Direction, Reason};

macro_rules! by_name {
    ($t:ty, $what:literal) => {
        impl $t {
            /// The variant whose [`as_str`](Self::as_str) is `name`.
            pub fn from_name(name: &str) -> Option<$t> {
                <$t>::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl serde::Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                struct Name;
                impl de::Visitor<'_> for Name {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$t, E> {
                        <$t>::from_name(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
                    }
                }
                d.deserialize_str(Name)
            }
        }
    };
}

by_name!(Reason, "a reason name (pass_rule, drop_default, ...)");
by_name!(Direction, "egress or inbound");
by_name!(Action, "allow or deny");

macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        /// The stable name; pads to a requested width (`{:<9}`).
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}

display_by_name!(Reason, Direction, Action);

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::String};

    use super::*;

    #[test]
    fn every_name_round_trips_and_an_unknown_one_is_an_error() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
        }
        for d in Direction::ALL {
            assert_eq!(serde_json::from_str::<Direction>(&serde_json::to_string(&d).unwrap()).unwrap(), d);
        }
        for a in Action::ALL {
            assert_eq!(serde_json::from_str::<Action>(&serde_json::to_string(&a).unwrap()).unwrap(), a);
        }
        let err = serde_json::from_str::<Direction>("\"sideways\"").unwrap_err();
        assert!(format!("{err}").contains("egress or inbound"), "{err}");
        assert_eq!(format!("{:<9}|", Direction::Egress), String::from("egress   |"));
    }
}
