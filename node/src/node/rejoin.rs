//! `leasehold serve --rejoin`: a member whose data was lost comes back empty, through
//! the leader (removed, added back as a learner, a voter once caught up).

use super::*;

impl Node {
    /// Rejoin the cluster as an empty member: for a node whose data directory is damaged
    /// or was lost. It refuses unless a majority of the cluster's members (counting the
    /// others only) answers. Then it moves the data directory aside
    /// (`DIR.rejoin-<unix seconds>`), has the leader remove this node from the membership,
    /// starts empty (never bootstrapping), and has the leader add it back: as a learner
    /// first, caught up, then a voter. A member that lost its log must not vote before it
    /// holds the log again: it might grant a vote its lost self already gave in that term,
    /// or help elect a leader that lacks committed entries (openraft's FAQ, "Can I wipe
    /// out the data of ONE node"). As a learner it votes in nothing, and it becomes a
    /// voter only by a membership change committed after it caught up.
    pub async fn rejoin(config: Config) -> Result<Node, StartError> {
        config.validate()?;
        let refuse = |m: String| Err(StartError::Rejoin(m));
        let Some(dir) = config.data_dir.clone() else {
            return refuse("an in-memory node has nothing to rejoin from; set data_dir".into());
        };
        let members = &config.cluster.members;
        if !members.iter().any(|m| m.id == config.node_id) {
            return refuse(format!(
                "node {} is not in cluster.members; --rejoin is for a member of an existing cluster",
                config.node_id
            ));
        }
        let secret = read_secret(&config)?;
        let tls = match config.tls.enabled() {
            true => Some(Tls::load(&config.tls)?),
            false => None,
        };
        let peers = PeerClient::new(
            secret,
            Arc::new(Faults::default()),
            config.cluster.peer_proxy,
            tls.as_ref().map(|t| t.current().peer_client.clone()),
        );
        let mut answered = Vec::new();
        for member in members.iter().filter(|m| m.id != config.node_id) {
            let addr = member.peer_addr.to_string();
            if peers.is_initialized(&addr, Duration::from_secs(2)).await {
                answered.push(addr);
            }
        }
        let quorum = members.len() / 2 + 1;
        if answered.len() < quorum {
            return refuse(format!(
                "{} of the other {} members answered, and rejoining needs {quorum} of them (a \
                 majority of the cluster without this node) to remove it and add it back \
                 safely; start the others first",
                answered.len(),
                members.len() - 1
            ));
        }
        if dir.exists()
            && std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = dir.with_file_name(format!(
                "{}.rejoin-{stamp}",
                dir.file_name()
                    .map_or("data".into(), |n| n.to_string_lossy())
            ));
            std::fs::rename(&dir, &aside).map_err(|e| StartError::Storage {
                path: dir.display().to_string(),
                message: format!("cannot move it aside to {}: {e}", aside.display()),
            })?;
            warn!(from = %dir.display(), to = %aside.display(), "rejoin: moved the data directory aside");
        }
        let ask = |change: MembershipChange, timeout: Duration| {
            let (peers, answered) = (peers.clone(), answered.clone());
            async move {
                // Only the leader changes the membership: try the members that answered
                // until one of them leads (the cluster may be electing one right now).
                let give_up = tokio::time::Instant::now() + timeout;
                let mut last = String::from("no member answered");
                while tokio::time::Instant::now() < give_up {
                    for addr in &answered {
                        let request = ForwardRequest::ChangeMembership(change.clone());
                        match peers.forward(addr, request, timeout).await {
                            Ok(Ok(_)) | Ok(Err(CoreError::NoSuchMember(_))) => return Ok(()),
                            Ok(Err(e)) => last = format!("{addr}: {e}"),
                            Err(e) => last = format!("{addr}: {e}"),
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(StartError::Rejoin(format!(
                    "the membership change failed: {last}"
                )))
            }
        };
        let change_timeout = config.limits.request_timeout() * 5;
        ask(
            MembershipChange::Remove { id: config.node_id },
            change_timeout,
        )
        .await?;
        info!(
            node_id = config.node_id,
            "rejoin: removed from the membership; starting empty"
        );
        let node = Node::start(config.clone()).await?;
        let add = MembershipChange::Add {
            id: config.node_id,
            peer_addr: config.advertised_peer_addr(node.peer_addr()),
            client_addr: config.advertised_client_addr(node.client_addr()),
        };
        if let Err(e) = ask(add, change_timeout).await {
            node.shutdown().await;
            return Err(e);
        }
        info!(
            node_id = config.node_id,
            "rejoin: caught up and a voter again"
        );
        Ok(node)
    }
}
