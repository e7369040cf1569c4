//! How many connections a run uses (`transfers:` in a job file).
//!
//! A small file costs a connection about four round trips even with the commands that can go
//! together sent together (SIZE with the next EPSV; MFMT, RNFR and RNTO; STOR while the data
//! connection's TCP and TLS handshakes run; the 226), and only a few milliseconds of work on
//! either side. On loopback four connections keep two cores busy; over a link with a 20 ms
//! round trip each connection waits about 80 ms per file, so the same four leave the CPU and
//! the server idle most of the time and a run is latency-bound. `transfers: auto` (the
//! default) therefore scales the connections with the round trip measured at login, up to a
//! ceiling the user sets (`max_transfers:`, default [`DEFAULT_MAX_TRANSFERS`]): servers limit
//! connections per user, and a run that meets that limit steps down as it always did.
//!
//! Pure: the run hands in the measured round trip.

use std::time::Duration;

/// `transfers:` when the job file does not set it.
pub const DEFAULT_MAX_TRANSFERS: usize = 16;

/// Connections `transfers: auto` uses on a link with no measurable latency (loopback, a LAN):
/// what `transfers:` always defaulted to.
pub const AUTO_FLOOR: usize = 4;

/// What a job file asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfers {
    /// Exactly this many connections (`transfers: 8`).
    Fixed(usize),
    /// As many as the round trip calls for, at most `max` (`transfers: auto`).
    Auto { max: usize },
}

impl Default for Transfers {
    fn default() -> Transfers {
        Transfers::Auto {
            max: DEFAULT_MAX_TRANSFERS,
        }
    }
}

impl Transfers {
    /// The most connections a run of the job may open, whatever the link.
    pub fn ceiling(self) -> usize {
        match self {
            Transfers::Fixed(n) => n,
            Transfers::Auto { max } => max,
        }
    }

    /// The connections for a link whose round trip is `rtt`. With `auto`: the floor, plus as
    /// many as keep the per-file waiting covered, `AUTO_FLOOR * (1 + 8 * rtt / 10 ms)` (ten
    /// milliseconds being what one small file costs a connection on loopback, measured: 2,000
    /// files in 4.8 s on four connections), within the floor and the ceiling.
    pub fn for_rtt(self, rtt: Duration) -> usize {
        match self {
            Transfers::Fixed(n) => n,
            Transfers::Auto { max } => {
                let waiting_per_file = rtt.as_secs_f64() * 8.0;
                let wanted = AUTO_FLOOR as f64 * (1.0 + waiting_per_file / 0.010);
                let wanted = if wanted.is_finite() {
                    wanted.floor().min(max as f64) as usize
                } else {
                    max
                };
                wanted.clamp(AUTO_FLOOR.min(max), max.max(1))
            }
        }
    }
}

/// How many of `connections` a listing of `dirs` directories, one per connection at a time,
/// needs: as many as the fewest rounds allow, no more. 20 directories on 16 connections take two
/// rounds either way, and 10 connections list them in two rounds too: the other 6 would only
/// log in (a password check each, on the partner's server) and wait. Never 0.
pub fn for_listing(dirs: usize, connections: usize) -> usize {
    let connections = connections.max(1);
    let dirs = dirs.max(1);
    let rounds = dirs.div_ceil(connections);
    dirs.div_ceil(rounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn auto_keeps_four_on_loopback_and_grows_with_the_round_trip_to_the_ceiling() {
        let auto = Transfers::default();
        assert_eq!(auto.for_rtt(Duration::from_micros(80)), 4);
        assert_eq!(auto.for_rtt(ms(1)), 7);
        assert_eq!(auto.for_rtt(ms(20)), 16);
        assert_eq!(auto.for_rtt(ms(50)), 16);
        assert_eq!(Transfers::Auto { max: 40 }.for_rtt(ms(20)), 40);
        assert_eq!(Transfers::Auto { max: 2 }.for_rtt(ms(0)), 2);
    }

    #[test]
    fn a_fixed_count_is_kept_whatever_the_link() {
        assert_eq!(Transfers::Fixed(3).for_rtt(ms(100)), 3);
        assert_eq!(Transfers::Fixed(3).ceiling(), 3);
    }

    proptest! {
        #[test]
        fn auto_stays_within_one_and_its_ceiling_and_never_shrinks_as_latency_grows(
            max in 1usize..=64, a in 0u64..10_000_000, b in 0u64..10_000_000,
        ) {
            let t = Transfers::Auto { max };
            let (lo, hi) = (a.min(b), a.max(b));
            let (n_lo, n_hi) = (t.for_rtt(Duration::from_nanos(lo * 100)), t.for_rtt(Duration::from_nanos(hi * 100)));
            prop_assert!((1..=max).contains(&n_lo));
            prop_assert!(n_lo <= n_hi);
        }
    }

    #[test]
    fn a_listing_takes_as_many_connections_as_its_fewest_rounds_need() {
        assert_eq!(for_listing(20, 16), 10);
        assert_eq!(for_listing(16, 16), 16);
        assert_eq!(for_listing(17, 16), 9);
        assert_eq!(for_listing(3, 16), 3);
        assert_eq!(for_listing(1000, 16), 16);
        assert_eq!(for_listing(0, 16), 1);
        assert_eq!(for_listing(5, 0), 1);
        for dirs in 1..200 {
            for conns in 1..20 {
                let n = for_listing(dirs, conns);
                assert!(n >= 1 && n <= conns.min(dirs));
                assert_eq!(dirs.div_ceil(n), dirs.div_ceil(conns), "{dirs} on {conns}");
            }
        }
    }
}
