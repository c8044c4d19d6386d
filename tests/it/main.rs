
mod cluster;
mod primary;
mod faults;
