//! Which server of a twemproxy pool a key's hash lands on: nutcracker 0.5's
//! distributions (`src/hashkit/nc_ketama.c`, `nc_modula.c`, `nc_random.c`),
//! bit for bit, over every server of the pool.

/// How keys are spread (`distribution:` in nutcracker.yml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    /// Consistent hashing: 160 points per server scaled by its weight, each
    /// four words of the MD5 of `"<name>-<n>"`.
    #[default]
    Ketama,
    /// The hash modulo the total weight, each server `weight` times in turn.
    Modula,
    /// A random server for every request.
    Random,
}

impl Distribution {
    /// Every distribution, by its name in nutcracker.yml.
    pub const NAMES: [(&'static str, Distribution); 3] = [
        ("ketama", Distribution::Ketama),
        ("modula", Distribution::Modula),
        ("random", Distribution::Random),
    ];
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = Self::NAMES
            .iter()
            .find(|(_, d)| d == self)
            .map_or("ketama", |(name, _)| name);
        f.write_str(name)
    }
}

impl std::str::FromStr for Distribution {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::NAMES
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, d)| *d)
            .ok_or_else(|| {
                format!("unknown distribution `{name}`, expected one of: ketama, modula, random")
            })
    }
}

/// A pool's points: (value, server index), sorted by value for ketama.
#[derive(Debug, Clone)]
pub(crate) struct Continuum {
    distribution: Distribution,
    points: Vec<(u32, u32)>,
}

/// What a server brings to the continuum: its name (the hashed one) and
/// weight.
#[derive(Debug, Clone)]
pub(crate) struct Weighted {
    pub(crate) name: String,
    pub(crate) weight: u32,
}

impl Continuum {
    /// The continuum of `servers` (in the pool's order) over those `live`
    /// says are in (every one, but for ejected servers), as nutcracker's
    /// `*_update` builds it.
    pub(crate) fn new(
        distribution: Distribution,
        servers: &[Weighted],
        live: impl Fn(usize) -> bool,
    ) -> Self {
        let live: Vec<(usize, &Weighted)> = servers
            .iter()
            .enumerate()
            .filter(|(i, _)| live(*i))
            .collect();
        let points = match distribution {
            Distribution::Ketama => ketama(&live),
            Distribution::Modula => live
                .iter()
                .flat_map(|&(i, server)| (0..server.weight).map(move |_| (0, i as u32)))
                .collect(),
            Distribution::Random => live.iter().map(|&(i, _)| (0, i as u32)).collect(),
        };
        Self {
            distribution,
            points,
        }
    }

    /// Whether no server is in it.
    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The index of the server `hash` lands on (0 when none is in).
    pub(crate) fn dispatch(&self, hash: u32) -> usize {
        let n = self.points.len();
        if n == 0 {
            return 0;
        }
        let point = match self.distribution {
            Distribution::Ketama => {
                let at = self.points.partition_point(|&(value, _)| value < hash);
                if at == n { 0 } else { at }
            }
            Distribution::Modula => hash as usize % n,
            Distribution::Random => fastrand_index(n),
        };
        self.points[point].1 as usize
    }
}

/// nutcracker's `ketama_update` over the `live` servers (with their
/// indexes in the pool): the share of each is its weight over the live
/// servers' total.
fn ketama(servers: &[(usize, &Weighted)]) -> Vec<(u32, u32)> {
    const POINTS_PER_SERVER: f32 = 160.0;
    let live = servers.len() as f32;
    let total: u32 = servers.iter().map(|(_, s)| s.weight).sum();
    let mut points = Vec::new();
    for &(index, server) in servers {
        let pct = server.weight as f32 / total as f32;
        // C: (float)(pct * 160 / 4 * (float)n + 0.0000000001), in float but
        // for the double constant.
        let scaled = (f64::from(pct * POINTS_PER_SERVER / 4.0 * live) + 0.000_000_000_1) as f32;
        let per_server = (scaled.floor() * 4.0) as u32;
        for pointer in 0..per_server / 4 {
            let host = format!("{}-{pointer}", server.name);
            for word in 0..4 {
                points.push((super::hash::md5_word(host.as_bytes(), word), index as u32));
            }
        }
    }
    points.sort_by_key(|&(value, _)| value);
    points
}

/// A random index below `n` (the `random` distribution).
fn fastrand_index(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_usize(n);
    hasher.finish() as usize % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ketama_gives_each_server_points_by_weight_and_wraps_around() {
        let servers = weighted(&[("a:1", 1), ("b:1", 3)]);
        let continuum = Continuum::new(Distribution::Ketama, &servers, |_| true);
        let of = |i: u32| continuum.points.iter().filter(|p| p.1 == i).count();
        assert_eq!((of(0), of(1)), (80, 240));
        assert!(continuum.points.windows(2).all(|w| w[0].0 <= w[1].0));
        let last = continuum.points.last().unwrap();
        assert_eq!(continuum.dispatch(last.0), last.1 as usize);
        assert_eq!(
            continuum.dispatch(last.0.wrapping_add(1).max(last.0)),
            continuum.dispatch(0)
        );
    }

    #[test]
    fn modula_repeats_each_server_by_its_weight() {
        let servers = weighted(&[("a", 2), ("b", 1)]);
        let continuum = Continuum::new(Distribution::Modula, &servers, |_| true);
        let picked: Vec<usize> = (0..6).map(|h| continuum.dispatch(h)).collect();
        assert_eq!(picked, [0, 0, 1, 0, 0, 1]);
    }

    #[test]
    fn an_ejected_server_has_no_points_and_the_others_share_its_part() {
        let servers = weighted(&[("a", 1), ("b", 1), ("c", 2)]);
        let without_b = |i: usize| i != 1;
        let ketama = Continuum::new(Distribution::Ketama, &servers, without_b);
        let of = |i: u32| ketama.points.iter().filter(|p| p.1 == i).count();
        // 160 points a live server, scaled by weight over the live ones
        // (1/3 and 2/3 of 2 × 160).
        assert_eq!((of(0), of(1), of(2)), (104, 0, 212));
        let modula = Continuum::new(Distribution::Modula, &servers, without_b);
        let picked: Vec<usize> = (0..3).map(|h| modula.dispatch(h)).collect();
        assert_eq!(picked, [0, 2, 2]);
        assert!(Continuum::new(Distribution::Ketama, &servers, |_| false).is_empty());
    }

    fn weighted(servers: &[(&str, u32)]) -> Vec<Weighted> {
        servers
            .iter()
            .map(|&(name, weight)| Weighted {
                name: name.into(),
                weight,
            })
            .collect()
    }
}
