//! A serde `Deserializer` wrapper that bounds what one body can make the
//! decoder do: how deep it recurses and how much heap the decoded value
//! holds.
//!
//! bincode's byte limit alone does not do that on the serde path: a
//! sequence is decoded element by element with serde's own visitor, which
//! preallocates up to 1 MiB per `Vec` from the length the peer claims, and a
//! value's in-memory form can be twenty times its varint form (an empty
//! `Replica` is 13 bytes on the wire and 280 in memory). Nothing bounds
//! nesting either, so a self-nested `Replica` overflows the stack.
//!
//! The wrapper sits between the types' derived `Deserialize` and bincode's
//! deserializer and:
//! - counts nesting (every sequence, map, enum, `Some` and newtype entered)
//!   and refuses past [`Budget`]'s depth, before recursing further;
//! - hides the claimed length from the visitors (no preallocation: a `Vec`
//!   grows as elements actually arrive) and charges each element's slot as
//!   `Vec`'s doubling would reserve it, before the element is decoded;
//! - reads text and byte strings borrowed from the body and charges their
//!   length before the visitor copies them, so a claimed length costs
//!   nothing until the bytes are there and paid for.
//!
//! Structs and tuples are visited as sequences too but live inline in their
//! parent, so their fields are not charged.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::cell::Cell;
use std::fmt;

/// Which bound a body hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exceeded {
    Depth,
    Heap,
}

/// The allowance of one decode; shared by every level of the wrapper.
pub(super) struct Budget {
    depth: Cell<usize>,
    max_depth: usize,
    heap_left: Cell<usize>,
    exceeded: Cell<Option<Exceeded>>,
}

impl Budget {
    pub(super) fn new(max_depth: usize, max_heap: usize) -> Budget {
        Budget {
            depth: Cell::new(0),
            max_depth,
            heap_left: Cell::new(max_heap),
            exceeded: Cell::new(None),
        }
    }

    /// The bound a failed decode hit, if that is why it failed.
    pub(super) fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded.get()
    }

    fn refuse<E: de::Error>(&self, why: Exceeded) -> E {
        self.exceeded.set(Some(why));
        E::custom(match why {
            Exceeded::Depth => "nested too deep",
            Exceeded::Heap => "decoded form too large",
        })
    }

    /// Runs `f` one level deeper, refusing before it starts past the limit.
    fn nested<T, E: de::Error>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let depth = self.depth.get();
        if depth >= self.max_depth {
            return Err(self.refuse(Exceeded::Depth));
        }
        self.depth.set(depth + 1);
        let out = f();
        self.depth.set(depth);
        out
    }

    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.heap_left.get().checked_sub(bytes) {
            Some(left) => {
                self.heap_left.set(left);
                Ok(())
            }
            None => Err(self.refuse(Exceeded::Heap)),
        }
    }
}

/// Decodes `T` from `inner` within `budget`.
pub(super) struct Root<'b, T> {
    pub(super) budget: &'b Budget,
    pub(super) marker: std::marker::PhantomData<T>,
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Root<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<T, D::Error> {
        T::deserialize(Bounded {
            inner,
            budget: self.budget,
        })
    }
}

struct Bounded<'b, D> {
    inner: D,
    budget: &'b Budget,
}

/// How a visited sequence is held: its own heap buffer, or inline fields.
#[derive(Clone, Copy)]
enum Holding {
    Heap,
    Inline,
}

struct Guard<'b, V> {
    visitor: V,
    budget: &'b Budget,
    holding: Holding,
}

impl<'b, V> Guard<'b, V> {
    fn new(visitor: V, budget: &'b Budget, holding: Holding) -> Self {
        Guard {
            visitor,
            budget,
            holding,
        }
    }
}

macro_rules! forward_plain {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            self.inner.$method(Guard::new(visitor, self.budget, Holding::Inline))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<'_, D> {
    type Error = D::Error;

    forward_plain! {
        deserialize_any deserialize_bool
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_bytes
        deserialize_option deserialize_unit deserialize_map
        deserialize_identifier deserialize_ignored_any
    }

    // Borrowed, so the length is checked against the body and charged
    // before anything is allocated (see the module comment).
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_str(Guard::new(visitor, self.budget, Holding::Inline))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_bytes(Guard::new(visitor, self.budget, Holding::Inline))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_seq(Guard::new(visitor, self.budget, Holding::Heap))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_unit_struct(name, Guard::new(visitor, self.budget, Holding::Inline))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_newtype_struct(name, Guard::new(visitor, self.budget, Holding::Inline))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner
            .deserialize_tuple(len, Guard::new(visitor, self.budget, Holding::Inline))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_tuple_struct(
            name,
            len,
            Guard::new(visitor, self.budget, Holding::Inline),
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_struct(
            name,
            fields,
            Guard::new(visitor, self.budget, Holding::Inline),
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.inner.deserialize_enum(
            name,
            variants,
            Guard::new(visitor, self.budget, Holding::Inline),
        )
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Guard<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool)
        visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
        visit_f32(f32) visit_f64(f64) visit_char(char)
    }

    // Text and bytes: whatever the visitor keeps is at most their length.
    fn visit_str<E: de::Error>(self, v: &str) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.visitor.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.visitor.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.visitor.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.visitor.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.visitor.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<V::Value, E> {
        self.budget.charge(v.len())?;
        self.visitor.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        let budget = self.budget;
        budget.nested(|| self.visitor.visit_some(Bounded { inner, budget }))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
        let budget = self.budget;
        budget.nested(|| self.visitor.visit_newtype_struct(Bounded { inner, budget }))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, inner: A) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        let seq = Seq {
            inner,
            budget,
            holding: self.holding,
            slots: Slots::default(),
        };
        budget.nested(|| self.visitor.visit_seq(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, inner: A) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        let map = Map {
            inner,
            budget,
            keys: Slots::default(),
            values: Slots::default(),
        };
        budget.nested(|| self.visitor.visit_map(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, inner: A) -> Result<V::Value, A::Error> {
        let budget = self.budget;
        budget.nested(|| self.visitor.visit_enum(Enum { inner, budget }))
    }
}

/// The capacity a `Vec` pushed one element at a time would have reserved.
#[derive(Default)]
struct Slots {
    len: usize,
    capacity: usize,
}

impl Slots {
    /// Makes room for one more element of `size` bytes and returns the bytes
    /// that growth newly reserves (as `RawVec` grows: a small first
    /// capacity, then doubling).
    fn grow(&mut self, size: usize) -> usize {
        let mut reserved = 0;
        if self.len == self.capacity {
            let first = match size {
                1 => 8,
                2..=1024 => 4,
                _ => 1,
            };
            let capacity = (self.capacity.saturating_mul(2)).max(first);
            reserved = (capacity - self.capacity).saturating_mul(size);
            self.capacity = capacity;
        }
        self.len += 1;
        reserved
    }
}

struct Seq<'b, A> {
    inner: A,
    budget: &'b Budget,
    holding: Holding,
    slots: Slots,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        // Charged only when an element follows: the visitor's last call,
        // which finds the end, reserves nothing.
        if matches!(self.holding, Holding::Heap) && self.inner.size_hint() != Some(0) {
            self.budget
                .charge(self.slots.grow(std::mem::size_of::<T::Value>()))?;
        }
        self.inner.next_element_seed(Seed {
            seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        match self.holding {
            // The claimed length is not evidence: let the buffer grow with
            // what arrives.
            Holding::Heap => None,
            Holding::Inline => self.inner.size_hint(),
        }
    }
}

struct Map<'b, A> {
    inner: A,
    budget: &'b Budget,
    keys: Slots,
    values: Slots,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if self.inner.size_hint() != Some(0) {
            self.budget
                .charge(self.keys.grow(std::mem::size_of::<K::Value>()))?;
        }
        self.inner.next_key_seed(Seed {
            seed,
            budget: self.budget,
        })
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.budget
            .charge(self.values.grow(std::mem::size_of::<S::Value>()))?;
        self.inner.next_value_seed(Seed {
            seed,
            budget: self.budget,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        None
    }
}

struct Enum<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, 'b, A: EnumAccess<'de>> EnumAccess<'de> for Enum<'b, A> {
    type Error = A::Error;
    type Variant = Variant<'b, A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), A::Error> {
        let budget = self.budget;
        let (value, inner) = self.inner.variant_seed(Seed { seed, budget })?;
        Ok((value, Variant { inner, budget }))
    }
}

struct Variant<'b, A> {
    inner: A,
    budget: &'b Budget,
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Variant<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, A::Error> {
        self.inner.newtype_variant_seed(Seed {
            seed,
            budget: self.budget,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner
            .tuple_variant(len, Guard::new(visitor, self.budget, Holding::Inline))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.inner
            .struct_variant(fields, Guard::new(visitor, self.budget, Holding::Inline))
    }
}

struct Seed<'b, S> {
    seed: S,
    budget: &'b Budget,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Bounded {
            inner,
            budget: self.budget,
        })
    }
}
