//! The integration tests of kiln-packages, one binary: each database against the real
//! thing (the host's dpkg database; rpm and pacman roots built by the real tools in
//! [`roots`]), property tests of the readers, and the choice between databases on this
//! host compared with supermin's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod choice_host;
mod dpkg_host;
mod dpkg_props;
mod pacman_props;
mod pacman_real;
mod roots;
mod rpm_real;
