mod cluster;
mod primary;
mod faults;
mod fixture;
mod ledger_tampering;
mod decoders;
mod projection_props;
mod durability;
