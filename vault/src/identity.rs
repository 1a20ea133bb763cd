//! Who is calling: the role and name in the peer's client certificate. The TLS layer has
//! already checked that the CA signed it; this reads what the CA wrote into it.

use crate::ca::{ADMIN_OU, NODE_OU};
use tonic::{Request, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Admin { name: String },
    Node { id: String },
}

impl Peer {
    /// As audit entries name actors: `admin:<CN>` or `node:<id>`.
    pub fn actor(&self) -> String {
        match self {
            Peer::Admin { name } => format!("admin:{name}"),
            Peer::Node { id } => format!("node:{id}"),
        }
    }
}

/// The peer of a request, from the first certificate of its chain.
pub fn peer_of<T>(request: &Request<T>) -> Result<Peer, Status> {
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let der = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    peer_from_der(der).ok_or_else(|| Status::permission_denied("client certificate names no Hush role"))
}

/// The actor to record for a request, even one without a usable certificate.
pub fn actor_of<T>(request: &Request<T>) -> String {
    peer_of(request).map(|p| p.actor()).unwrap_or_else(|_| "unauthenticated".into())
}

fn peer_from_der(der: &[u8]) -> Option<Peer> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let ou = subject.iter_organizational_unit().next()?.as_str().ok()?;
    match ou {
        ADMIN_OU => Some(Peer::Admin { name: cn }),
        NODE_OU => Some(Peer::Node { id: cn }),
        _ => None,
    }
}

/// Admin operations: refuse anything but an admin certificate.
pub fn require_admin<T>(request: &Request<T>) -> Result<Peer, Status> {
    match peer_of(request)? {
        peer @ Peer::Admin { .. } => Ok(peer),
        Peer::Node { .. } => Err(Status::permission_denied("this operation needs an admin certificate")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;

    fn der_of(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn roles_come_from_the_ou() {
        let ca = CertificateAuthority::generate().unwrap();
        let admin = ca.issue_client("alice", ADMIN_OU).unwrap();
        let node = ca.issue_client("n1", NODE_OU).unwrap();
        let other = ca.issue_client("x", "something-else").unwrap();
        assert_eq!(peer_from_der(&der_of(&admin.cert_pem)), Some(Peer::Admin { name: "alice".into() }));
        assert_eq!(peer_from_der(&der_of(&node.cert_pem)), Some(Peer::Node { id: "n1".into() }));
        assert_eq!(peer_from_der(&der_of(&other.cert_pem)), None);
    }
}
