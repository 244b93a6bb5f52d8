//! Hot-swappable settings shared between a running stack and whoever configures it.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// A value that can be replaced while requests are being served.
///
/// Layers read it once per request (a lock-free load), so a new value applies to the next request
/// and never disturbs one in flight. Clones share the same value.
#[derive(Debug)]
pub struct Setting<T>(Arc<ArcSwap<T>>);

impl<T> Setting<T> {
    /// A setting holding `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(value)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// The current value, to read for a moment (within a call, not across an `.await`): unlike
    /// [`get`](Self::get), no reference count is touched, which matters on a path every request
    /// takes from every thread.
    pub fn current(&self) -> Current<T> {
        Current(self.0.load())
    }

    /// Replace the value; requests that start afterwards see the new one.
    pub fn set(&self, value: T) {
        self.0.store(Arc::new(value));
    }
}

/// A [`Setting`]'s value as read by [`Setting::current`].
pub struct Current<T>(arc_swap::Guard<Arc<T>>);

impl<T> std::ops::Deref for Current<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Clone for Setting<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: Default> Default for Setting<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T> From<T> for Setting<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}
