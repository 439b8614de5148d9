# frozen_string_literal: true

require_relative "test_helper"
require "digest"
require "openssl"

# The HTTP client itself, against real nodes: failover, per-try timeouts, bearer
# tokens, a CA file for https, error mapping.
class ClientTest < Minitest::Test
  include TestSupport

  def cluster
    LeaseholdCluster.shared
  end

  def test_endpoints_are_checked_and_the_token_never_shown
    assert_raises(ArgumentError) { Leasehold::Client.new(endpoints: []) }
    assert_raises(ArgumentError) { Leasehold::Client.new(endpoints: ["localhost:7070"]) }
    c = Leasehold::Client.new(endpoints: ["http://a:1/", " http://b:2"], token: "s3cret-token")
    assert_equal %w[http://a:1 http://b:2], c.endpoints
    refute_includes c.inspect, "s3cret-token"
    refute_equal c.new_request_id, c.new_request_id
    assert_raises(Leasehold::InvalidArgumentError) { c.lock_info("") }
  end

  def test_a_refused_endpoint_fails_over_and_the_working_one_is_remembered
    dead = "http://127.0.0.1:#{LeaseholdCluster.free_ports(1).first}"
    c = Leasehold::Client.new(endpoints: [dead, *cluster.urls])
    assert_equal cluster.urls.size, c.cluster[:members].size
    assert_equal cluster.urls.first, c.current_endpoint
    lock = c.lock(unique("failover"))
    assert lock.acquire
    assert lock.release
  end

  def test_no_endpoint_at_all_is_unavailable
    ports = LeaseholdCluster.free_ports(2)
    c = Leasehold::Client.new(endpoints: ports.map { |p| "http://127.0.0.1:#{p}" }, timeout: 1)
    error = assert_raises(Leasehold::UnavailableError) { c.cluster }
    assert_nil error.status
    assert_match(/cannot reach the node/, error.message)
  end

  # A paused node accepts connections but never answers: after attempt_timeout
  # the client moves on. A follower is paused so the shared cluster keeps a quorum.
  def test_a_paused_node_is_left_after_the_attempt_timeout
    leader = cluster.leader_index
    follower = ((0...3).to_a - [leader]).first
    cluster.pause(follower)
    c = Leasehold::Client.new(endpoints: [cluster.urls[follower], cluster.urls[leader]], attempt_timeout: 0.3)
    started = now
    key = unique("paused")
    record = c.acquire_lock(key, owner: "me", ttl: 5)
    assert_operator now - started, :>=, 0.3
    assert_operator now - started, :<, 2
    assert_equal cluster.urls[leader], c.current_endpoint
    c.release_lock(key, owner: "me", token: record[:token])
  ensure
    cluster.resume(follower) if follower
  end

  def test_server_errors_map_to_classes_with_their_details
    c = Leasehold::Client.new(endpoints: cluster.urls)
    assert_raises(Leasehold::LeaseNotFoundError) { c.keepalive(999_999_999) }
    assert_raises(Leasehold::NotFoundError) { c.keepalive(999_999_999) }
    assert_nil c.whereis(unique("nobody"))
    error = assert_raises(Leasehold::NotOwnerError) { c.release_lock(unique("free"), owner: "x", token: 1) }
    assert_equal ["not_owner", 409], [error.code, error.status]
    key = unique("semaphore")
    slot = c.acquire_semaphore(key, limit: 1, owner: "a", ttl: 5)
    full = assert_raises(Leasehold::SemaphoreFullError) { c.acquire_semaphore(key, limit: 1, owner: "b", ttl: 5) }
    assert_equal "a", full.holder[:owner]
    assert_raises(Leasehold::LimitMismatchError) { c.acquire_semaphore(key, limit: 2, owner: "b", ttl: 5) }
    c.release_semaphore(key, owner: "a", token: slot[:token])
  end

  def test_semaphore_objects_admit_limit_holders
    c = Leasehold::Client.new(endpoints: cluster.urls)
    key = unique("pool")
    a = c.semaphore(key, 2, ttl: 3)
    b = c.semaphore(key, 2, ttl: 3)
    assert a.acquire
    assert b.acquire
    refute c.semaphore(key, 2).try_lock
    assert_equal [a.token, b.token].sort, a.holders.map { |h| h[:token] }.sort
    assert_equal a.token, a.holder[:token]
    assert_includes c.semaphores(prefix: key)[:semaphores].map { |s| s[:key] }, key
    a.release
    assert_equal [b.token], c.semaphore_info(key)[:holders].map { |h| h[:token] }
    b.release
  end

  def test_leases_grant_keepalive_get_and_revoke
    c = Leasehold::Client.new(endpoints: cluster.urls)
    lease = c.grant(ttl: 1.5, owner: "session")
    assert_equal({ lease_id: lease[:lease_id], ttl_ms: 1500 }, c.keepalive(lease[:lease_id]))
    key = unique("session")
    lock = c.lock(key, lease_id: lease[:lease_id])
    lock.acquire
    assert_equal [key], c.lease(lease[:lease_id])[:locks]
    assert_equal({ revoked: true, released: [key] }, c.revoke(lease[:lease_id]))
    assert_raises(Leasehold::LeaseNotFoundError) { c.lease(lease[:lease_id]) }
    wait_until("the lock reports the loss") { lock.state == :lost }
    assert_equal "revoked", c.wait_for_release(key, timeout: 1)[:reason]
  end

  # An acquire under an existing lease attaches to it without renewing it (its
  # TTL runs from its last renewal), so the client deadline must come from a
  # renewal sent after the grant, not from the acquire: never believe longer
  # than the cluster has left on the lease.
  def test_a_hold_under_an_existing_lease_is_not_believed_longer_than_the_lease
    c = Leasehold::Client.new(endpoints: cluster.urls)
    lease = c.grant(ttl: 3, owner: unique("session"))
    sleep 1.5
    lock = c.lock(unique("under-lease"), lease_id: lease[:lease_id])
    assert lock.acquire
    # The lease first, then the belief: the lease's true time left now is at most what the
    # read reported, so the check holds however slow the read was.
    remaining = c.lease(lease[:lease_id])[:remaining_ms] / 1000.0
    believed = lock.valid_until - now
    assert_operator believed, :<=, remaining + 0.05,
                    "believed #{believed.round(3)} s, the cluster has #{remaining} s left on the lease"
    assert lock.release
  ensure
    c.revoke(lease[:lease_id]) if lease
  end

  # A hung endpoint must not take the whole time left before the client
  # deadline: each renewal try at one endpoint gets half a heartbeat (at least
  # 100 ms), so the renewal fails over to a live node in time.
  def test_a_renewal_fails_over_from_a_hung_endpoint_before_the_deadline
    proxy = HangingProxy.new(cluster.urls[0])
    c = Leasehold::Client.new(endpoints: [proxy.url, *cluster.urls.drop(1)])
    losses = Queue.new
    lock = c.lock(unique("hung-endpoint"), ttl: 1.5, on_lost: ->(e) { losses << e })
    assert lock.acquire
    assert_equal proxy.url, c.current_endpoint
    proxy.hang!
    sleep 2.5 # well past the deadline of the last renewal through the proxy
    assert_empty losses
    assert lock.held?
    refute_equal proxy.url, c.current_endpoint
    assert lock.release
  ensure
    proxy&.close
  end

  def test_wait_for_release_and_expired
    c = Leasehold::Client.new(endpoints: cluster.urls)
    key = unique("wait")
    lock = c.lock(key, ttl: 1, owner: unique("dies"))
    lock.acquire
    assert_equal({ released: false }, c.wait_for_release(key, timeout: 0.1).slice(:released))
    lock.stop_heartbeat # the holder "dies": its lease runs out
    done = c.wait_for_release(key, timeout: 5, token: lock.token)
    assert_equal [true, "expired", lock.token], done.values_at(:released, :reason, :token)
    entry = c.expired.find { |e| e[:key] == key }
    assert_equal [lock.owner, lock.token], entry.values_at(:owner, :token)
  end

  # Bearer tokens, on a lone node with [auth].
  def test_bearer_tokens
    admin = "lh_admin_#{SecureRandom.hex(8)}"
    demo = "lh_demo_#{SecureRandom.hex(8)}"
    node = LeaseholdCluster.start(1, token: admin) do |dir|
      File.write(File.join(dir, "tokens.toml"), <<~TOML)
        [[token]]
        name = "admin"
        sha256 = "#{Digest::SHA256.hexdigest(admin)}"
        role = "admin"
        prefixes = [""]

        [[token]]
        name = "demo"
        sha256 = "#{Digest::SHA256.hexdigest(demo)}"
        role = "write"
        prefixes = ["demo/"]
      TOML
      ["--auth-tokens-file", File.join(dir, "tokens.toml")]
    end
    error = assert_raises(Leasehold::UnauthorizedError) { Leasehold::Client.new(endpoints: node.urls).cluster }
    assert_equal 401, error.status
    c = Leasehold::Client.new(endpoints: node.urls, token: demo)
    assert c.lock("demo/job").with_lock { |l| l.token.positive? }
    error = assert_raises(Leasehold::ForbiddenError) { c.lock("billing/job").acquire }
    assert_match(/demo/, error.message)
    assert_raises(Leasehold::UnauthorizedError) { Leasehold::Client.new(endpoints: node.urls, token: "wrong").cluster }
  ensure
    node&.stop
  end

  # https with the cluster's CA given as ca_file.
  def test_https_with_a_ca_file
    node = LeaseholdCluster.start(1, scheme: "https", ca_file: "ca.crt") do |dir|
      write_certificates(dir)
      %w[--tls-cert node.crt --tls-key node.key --tls-ca ca.crt].map { |a| a.start_with?("--") ? a : File.join(dir, a) }
    end
    c = Leasehold::Client.new(endpoints: node.urls, ca_file: File.join(node.dir, "ca.crt"))
    assert c.lock("tls/job").with_lock { |l| l.token.positive? }
    error = assert_raises(Leasehold::UnavailableError) { Leasehold::Client.new(endpoints: node.urls, timeout: 1).cluster }
    assert_match(/SSL/, error.message)
  ensure
    node&.stop
  end

  private

  # A CA and a certificate for 127.0.0.1 signed by it (serverAuth and clientAuth).
  def write_certificates(dir)
    ca_key = OpenSSL::PKey::RSA.new(2048)
    ca = certificate("CN=leasehold test CA", ca_key.public_key, serial: 1)
    ca.issuer = ca.subject
    extend_certificate(ca, ca, [["basicConstraints", "CA:TRUE", true], ["keyUsage", "keyCertSign,cRLSign", true]])
    ca.sign(ca_key, OpenSSL::Digest.new("SHA256"))

    key = OpenSSL::PKey::RSA.new(2048)
    cert = certificate("CN=127.0.0.1", key.public_key, serial: 2)
    cert.issuer = ca.subject
    extend_certificate(cert, ca, [["basicConstraints", "CA:FALSE", true],
                                  ["keyUsage", "digitalSignature,keyEncipherment", true],
                                  ["extendedKeyUsage", "serverAuth,clientAuth", false],
                                  ["subjectAltName", "IP:127.0.0.1,DNS:localhost", false]])
    cert.sign(ca_key, OpenSSL::Digest.new("SHA256"))
    File.write(File.join(dir, "ca.crt"), ca.to_pem)
    File.write(File.join(dir, "node.crt"), cert.to_pem)
    File.write(File.join(dir, "node.key"), key.to_pem)
  end

  def certificate(subject, public_key, serial:)
    cert = OpenSSL::X509::Certificate.new
    cert.version = 2
    cert.serial = serial
    cert.subject = OpenSSL::X509::Name.parse(subject)
    cert.public_key = public_key
    cert.not_before = Time.now - 60
    cert.not_after = Time.now + 3600
    cert
  end

  def extend_certificate(cert, issuer, extensions)
    factory = OpenSSL::X509::ExtensionFactory.new
    factory.subject_certificate = cert
    factory.issuer_certificate = issuer
    extensions.each { |name, value, critical| cert.add_extension(factory.create_extension(name, value, critical)) }
    cert.add_extension(factory.create_extension("subjectKeyIdentifier", "hash", false))
  end
end
