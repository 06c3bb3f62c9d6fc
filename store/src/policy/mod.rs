//! Store policy: the rules of the key store, apart from any storage backend.
//! (Module docs completed below as the layer grows.)

pub mod references;
