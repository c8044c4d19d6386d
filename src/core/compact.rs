//! Compact value types for the registry's records: [`Str`], an immutable string that holds up to
//! 23 bytes inline, and [`List`], a list that holds one item inline. A registry keeps hundreds
//! of thousands of services, each with a name, a capability, an endpoint and a metadata pair,
//! most of them short: as `String`s and `Vec`s each is an allocation of its own (issue 24,
//! item 2: a service cost 880 bytes of heap, 576 of them its record).
//!
//! Both read and write exactly as the `String` and `Vec` they replace: serde sees a string and a
//! sequence (so the canonical encoding, JSON and BCS are unchanged), and rkyv archives them as
//! `ArchivedString` and `ArchivedVec` (so checkpoints, seeds and ledger records written before
//! read back unchanged). They dereference to `str` and `[T]`, and convert from `&str`, `String`
//! and `Vec<T>` with `into()`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};
use serde::{Deserializer, Serializer};
use smallvec::SmallVec;
use smol_str::SmolStr;

/// An immutable string: up to 23 bytes inline, longer ones behind a shared pointer (a clone
/// never copies the text). Reads as a `&str` (it dereferences to one); made with `into()` from
/// a `&str` or `String`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str(SmolStr);

impl Str {
    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Deref for Str {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl Borrow<str> for Str {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str(SmolStr::new(s))
    }
}

impl From<String> for Str {
    fn from(s: String) -> Self {
        Str(SmolStr::from(s))
    }
}

impl From<&String> for Str {
    fn from(s: &String) -> Self {
        Str(SmolStr::new(s))
    }
}

impl From<Str> for String {
    fn from(s: Str) -> Self {
        s.0.into()
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.0.as_str() == other
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.0.as_str() == *other
    }
}

impl PartialEq<String> for Str {
    fn eq(&self, other: &String) -> bool {
        self.0.as_str() == other.as_str()
    }
}

impl PartialEq<Str> for str {
    fn eq(&self, other: &Str) -> bool {
        self == other.0.as_str()
    }
}

impl PartialEq<Str> for &str {
    fn eq(&self, other: &Str) -> bool {
        *self == other.0.as_str()
    }
}

impl PartialEq<Str> for String {
    fn eq(&self, other: &Str) -> bool {
        self.as_str() == other.0.as_str()
    }
}

impl serde::Serialize for Str {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SmolStr::deserialize(d).map(Str)
    }
}

impl Archive for Str {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedString::resolve_from_str(self.0.as_str(), resolver, out);
    }
}

impl<S> Serialize<S> for Str
where
    S: Fallible + ?Sized,
    S::Error: Source,
    str: rkyv::SerializeUnsized<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedString::serialize_from_str(self.0.as_str(), serializer)
    }
}

impl<D: Fallible + ?Sized> Deserialize<Str, D> for ArchivedString {
    fn deserialize(&self, _: &mut D) -> Result<Str, D::Error> {
        Ok(Str::from(self.as_str()))
    }
}

/// A list that holds one item inline (a service's capability, endpoint and metadata pair are
/// usually one each); more spill to the heap as a `Vec` does. Reads as a slice (it
/// dereferences to one); made with `into()` from a `Vec`, or collected from an iterator.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct List<T>(SmallVec<[T; 1]>);

impl<T> List<T> {
    /// An empty list.
    pub fn new() -> Self {
        List(SmallVec::new())
    }

    /// Appends an item.
    pub fn push(&mut self, item: T) {
        self.0.push(item);
    }

    /// The items as a `Vec`.
    pub fn into_vec(self) -> Vec<T> {
        self.0.into_vec()
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List::new()
    }
}

impl<T> Deref for List<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> std::ops::DerefMut for List<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for List<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<T> From<Vec<T>> for List<T> {
    fn from(v: Vec<T>) -> Self {
        List(SmallVec::from_vec(v))
    }
}

impl<T: Clone> From<&[T]> for List<T> {
    fn from(v: &[T]) -> Self {
        List(SmallVec::from(v))
    }
}

impl<T, const N: usize> From<[T; N]> for List<T> {
    fn from(v: [T; N]) -> Self {
        List(v.into_iter().collect())
    }
}

impl<T> From<List<T>> for Vec<T> {
    fn from(l: List<T>) -> Self {
        l.0.into_vec()
    }
}

impl<T> FromIterator<T> for List<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        List(iter.into_iter().collect())
    }
}

impl<T> Extend<T> for List<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl<T> IntoIterator for List<T> {
    type Item = T;
    type IntoIter = smallvec::IntoIter<[T; 1]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a List<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for List<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.0.as_slice() == other.as_slice()
    }
}

impl<T: PartialEq> PartialEq<List<T>> for Vec<T> {
    fn eq(&self, other: &List<T>) -> bool {
        self.as_slice() == other.0.as_slice()
    }
}

impl<T: PartialEq> PartialEq<[T]> for List<T> {
    fn eq(&self, other: &[T]) -> bool {
        self.0.as_slice() == other
    }
}

impl<T: serde::Serialize> serde::Serialize for List<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(List::from)
    }
}

impl<T: Archive> Archive for List<T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0.as_slice(), resolver, out);
    }
}

impl<T, S> Serialize<S> for List<T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_slice(self.0.as_slice(), serializer)
    }
}

impl<T, D> Deserialize<List<T>, D> for ArchivedVec<T::Archived>
where
    T: Archive,
    T::Archived: Deserialize<T, D>,
    D: Fallible + ?Sized,
{
    fn deserialize(&self, deserializer: &mut D) -> Result<List<T>, D::Error> {
        self.iter().map(|x| x.deserialize(deserializer)).collect::<Result<List<T>, D::Error>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The point of the types: short text and single items take no allocation of their own,
    /// and neither is larger than the `String` / `Vec` it replaces by more than its inline item.
    #[test]
    fn short_text_and_single_items_are_inline() {
        assert_eq!(std::mem::size_of::<Str>(), std::mem::size_of::<String>());
        assert_eq!(std::mem::size_of::<List<Str>>(), 32);
        assert!(!Str::from("10.255.255.255:65535/ap").0.is_heap_allocated(), "23 bytes: inline");
        assert!(Str::from("10.255.255.255:65535/api").0.is_heap_allocated(), "24 bytes: on the heap");
        assert!(!Str::from("object-store").0.is_heap_allocated());
        assert!(!List::from(vec![Str::from("gpu")]).0.spilled());
        assert!(List::from(vec![Str::from("gpu"), Str::from("cpu")]).0.spilled());
    }

    /// They encode exactly as `String` / `Vec` do, through serde (BCS, JSON) and rkyv.
    #[test]
    fn encode_as_the_string_and_vec_they_replace() {
        let words = ["", "a", "twenty-three bytes long", "twenty-four bytes long!!", "ünïcødé ✓"];
        let as_list: List<(Str, Str)> = words.iter().map(|w| (Str::from(*w), Str::from(format!("{w}{w}")))).collect();
        let as_vec: Vec<(String, String)> = words.iter().map(|w| (w.to_string(), format!("{w}{w}"))).collect();
        assert_eq!(bcs::to_bytes(&as_list).unwrap(), bcs::to_bytes(&as_vec).unwrap());
        assert_eq!(serde_json::to_string(&as_list).unwrap(), serde_json::to_string(&as_vec).unwrap());
        let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&as_list).unwrap();
        assert_eq!(&archived[..], &rkyv::to_bytes::<rkyv::rancor::Error>(&as_vec).unwrap()[..]);
        let back: List<(Str, Str)> = rkyv::from_bytes::<List<(Str, Str)>, rkyv::rancor::Error>(&archived).unwrap();
        assert_eq!(back, as_list);
        let back: List<(Str, Str)> = bcs::from_bytes(&bcs::to_bytes(&as_vec).unwrap()).unwrap();
        assert_eq!(back, as_list);
        assert_eq!(format!("{as_list:?}"), format!("{as_vec:?}"));
    }
}
