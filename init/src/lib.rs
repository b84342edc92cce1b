//! minos init library
