
mod cluster;
mod primary;
