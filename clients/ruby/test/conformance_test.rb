# frozen_string_literal: true

require_relative "test_helper"

# The client conformance scenarios of clients/CONFORMANCE.md (C1-C8), against
# real 3-node clusters of the built `leasehold` binary. C4b and C5 pause or kill
# nodes, so each starts a cluster of its own; the others share one.
class ConformanceTest < Minitest::Test
  include TestSupport

  def cluster
    LeaseholdCluster.shared
  end

  def client(endpoints = cluster.urls, **options)
    Leasehold::Client.new(endpoints: endpoints, **options)
  end

  # C1: A acquires (token > 0, held?); B's try-acquire fails at once with the
  # server's lock_held naming A as the holder.
  def test_c1_grant_and_conflict
    key = unique("c1")
    c = client
    a = c.lock(key, ttl: 10, owner: "A")
    assert a.acquire
    assert_operator a.token, :>, 0
    assert a.held?
    assert_equal "A", a.locked_by

    b = c.lock(key, ttl: 10, owner: "B")
    started = now
    error = assert_raises(Leasehold::LockNotOwnedError) { b.acquire(wait: 0) }
    assert_operator now - started, :<, 1, "refused at once, without waiting"
    assert_kind_of Leasehold::LockHeldError, error
    assert_equal "lock_held", error.code
    assert_equal 409, error.status
    assert_equal "A", error.holder[:owner]
    assert_equal a.token, error.holder[:token]
    assert_includes error.message, "held by \"A\""
    refute b.try_lock
    refute b.held?

    raw = assert_raises(Leasehold::LockHeldError) { c.acquire_lock(key, owner: "B", ttl: 10) }
    refute_kind_of Leasehold::LockNotOwnedError, raw, "the raw call raises the server's error as it is"
    assert_equal a.token, raw.holder[:token]
    assert a.release
    refute a.held?
    refute c.lock_info(key)[:held]
  end

  # C2: A holds; B then C queue; A releases: B gets it with a larger token; B
  # releases: C gets it.
  def test_c2_fifo_blocking_acquire
    key = unique("c2")
    c = client
    a = c.lock(key, ttl: 10, owner: "A")
    a.acquire
    b_client = client
    b_sends = record_successful_sends(b_client, :extend_lock)
    b = b_client.lock(key, ttl: 10, wait: 20, owner: "B")
    d = c.lock(key, ttl: 10, wait: 20, owner: "C")
    granted = Queue.new
    b_thread = Thread.new { b.acquire && granted << "B" }
    wait_until("B queued") { c.lock_info(key)[:waiters] == 1 }
    d_thread = Thread.new { d.acquire && granted << "C" }
    wait_until("C queued") { c.lock_info(key)[:waiters] == 2 }
    assert_equal %w[B C], c.lock_info(key)[:queue].map { |w| w[:owner] }

    a.release
    assert b_thread.value
    assert_equal "B", granted.pop
    assert b.held?
    assert_operator b.token, :>, a.token
    assert_equal 1, b_sends.size, "a grant after a wait is re-anchored with a keepalive"
    assert_in_delta b_sends.first + 10 * 0.99, b.valid_until, 0.005
    refute d.held?
    info = c.lock_info(key)
    assert_equal ["B", b.token, 1], [info[:owner], info[:token], info[:waiters]]

    b.release
    assert d_thread.value
    assert_equal "C", granted.pop
    assert d.held?
    assert_operator d.token, :>, b.token
    d.release
  end

  # C3: a 1 s TTL lock held for 3.5 s by the renewer keeps its token, never lost.
  def test_c3_renewal_keeps_the_lock
    key = unique("c3")
    c = client
    losses = []
    lock = c.lock(key, ttl: 1, on_lost: ->(e) { losses << e })
    lock.acquire
    acquired_at = now
    token = lock.token
    # Time passing is the subject of this test: 3.5 TTLs without touching the lock.
    sleep 3.5
    assert lock.held?
    assert_equal :held, lock.state
    assert_empty losses
    assert_operator lock.valid_until, :>, acquired_at + 3, "the deadline moved with the renewals"
    info = c.lock_info(key)
    assert info[:held]
    assert_equal [lock.owner, token], [info[:owner], info[:token]]
    events = c.lock_history(key)[:events]
    assert_equal ["acquired"], events.map { |e| e[:event] }, "never re-acquired"
    lock.release
    refute c.lock_info(key)[:held]
    assert_empty losses
  end

  # C4a: revoking the lock's lease from outside makes the client report the
  # loss (on_lost, reason :expired) within a few renewal periods.
  def test_c4a_revocation_is_reported_through_on_lost
    key = unique("c4a")
    c = client
    ttl = 3
    losses = Queue.new
    lock = c.lock(key, ttl: ttl, on_lost: ->(e) { losses << [e, now] })
    lock.acquire
    revoked_at = now
    assert_equal [key], client.revoke(lock.lease_id)[:released]
    error, lost_at = wait_until("loss reported", timeout: 3 * ttl) { losses.empty? ? nil : losses.pop }
    assert_kind_of Leasehold::LockLost, error
    assert_equal :expired, error.reason
    assert_match(/ended on the cluster/, error.message)
    assert_operator lost_at - revoked_at, :<=, 2 * (ttl / 3.0) + 0.5, "within a couple of renewal periods"
    refute lock.held?
    assert_equal :lost, lock.state
    assert_same error, lock.lost
  end

  # C4a, without on_lost: the loss is raised as LockLost into the with_lock
  # block; an operator's force release is reported as :stolen.
  def test_c4a_loss_is_raised_into_the_with_lock_block
    key = unique("c4a-raise")
    c = client
    inside = Queue.new
    worker = Thread.new do
      c.lock(key, ttl: 1.5).with_lock do |lock|
        inside << lock
        sleep 10 # interrupted by LockLost
        :not_interrupted
      end
    rescue Leasehold::LockLost => e
      e
    end
    lock = inside.pop
    ended = c.force_release(key)
    assert_equal lock.token, ended[:token]
    error = worker.value
    assert_kind_of Leasehold::LockLost, error
    assert_equal :stolen, error.reason
    assert_match(/operator/, error.message)
    refute lock.held?
  end

  # C4b: with every node paused, the client reports the loss by its own
  # deadline (t_send + ttl × 0.99), not before it.
  def test_c4b_loss_by_the_client_deadline
    fresh = LeaseholdCluster.start
    c = client(fresh.urls, attempt_timeout: 0.5)
    refreshes = record_successful_sends(c, :acquire_lock, :extend_lock)
    key = unique("c4b")
    ttl = 1.5
    inside = Queue.new
    worker = Thread.new do
      c.lock(key, ttl: ttl).with_lock do |lock|
        inside << lock
        sleep 30 # interrupted by LockLost
      end
    rescue Leasehold::LockLost => e
      [e, now]
    end
    lock = inside.pop
    wait_until("a renewal went through") { refreshes.size >= 2 }
    paused_at = now
    fresh.pause
    assert lock.held?, "still held right after the pause"
    error, lost_at = worker.join(4 * ttl)&.value
    refute_nil error, "loss not reported"
    assert_equal :unreachable, error.reason
    refute lock.held?

    # The deadline is t_send + ttl × 0.99 of the last request that refreshed the
    # hold, as seen from outside the lock: when that call was made.
    t_send = refreshes.max
    assert_operator t_send, :<=, paused_at
    expected = t_send + ttl * 0.99
    assert_in_delta expected, lock.valid_until, 0.005
    assert_operator lost_at, :>=, lock.valid_until, "reported #{lock.valid_until - lost_at}s before the client deadline"
    assert_operator lost_at, :>=, expected - 0.005
    assert_operator lost_at, :<=, expected + 0.3, "reported #{lost_at - expected}s after the client deadline"

    fresh.resume
    wait_until("the unrenewed hold expires on the cluster") { !c.lock_info(key)[:held] }
  ensure
    fresh&.stop
  end

  # C5: with all three endpoints given, killing the first one's process leaves
  # acquire, renewal and release working through the others. The first
  # endpoint is the leader's, so its death also forces an election.
  def test_c5_endpoint_failover
    fresh = LeaseholdCluster.start
    first = fresh.leader_index
    order = [first] + ((0...3).to_a - [first])
    c = client(order.map { |i| fresh.urls[i] })
    survivors = client(order.drop(1).map { |i| fresh.urls[i] })
    key = unique("c5")
    ttl = 3
    losses = []
    lock = c.lock(key, ttl: ttl, on_lost: ->(e) { losses << e })
    lock.acquire
    killed_at = now
    fresh.kill(first)

    wait_until("a renewal sent after the kill succeeded") { lock.valid_until > killed_at + ttl * 0.99 }
    assert lock.held?
    assert_empty losses
    assert_equal lock.token, survivors.lock_info(key)[:token]
    refute_equal fresh.urls[first], c.current_endpoint, "the client remembers an endpoint that works"

    other = c.lock(unique("c5-after"), ttl: ttl)
    assert other.acquire
    assert_equal other.token, survivors.lock_info(other.key)[:token]
    assert other.release
    assert lock.release
    refute survivors.lock_info(key)[:held]
    assert_empty losses
  ensure
    fresh&.stop
  end

  # C6: an acquire sent twice with one request id returns the same hold; the key
  # has one holder and one release frees it.
  def test_c6_retried_acquire_with_the_same_request_id
    key = unique("c6")
    owner = unique("owner")
    c = client
    id = c.new_request_id
    first = c.acquire_lock(key, owner: owner, ttl: 10, request_id: id)
    second = c.acquire_lock(key, owner: owner, ttl: 10, request_id: id)
    assert_equal [first[:token], first[:lease_id]], [second[:token], second[:lease_id]]
    info = c.lock_info(key)
    assert_equal [owner, first[:token], 0], [info[:owner], info[:token], info[:waiters]]
    assert_equal [key], c.lease(first[:lease_id])[:locks]
    assert_equal 1, leases_of(c, owner).size, "one lease, not two"

    assert_equal({ released: true }, c.release_lock(key, owner: owner, token: first[:token]))
    refute c.lock_info(key)[:held]
    assert_empty leases_of(c, owner), "no leaked lease"
    assert_equal %w[released acquired], c.lock_history(key)[:events].map { |e| e[:event] }
  end

  # C6 end to end: the first reply is lost on the way back (a proxy drops it);
  # the client retries on the next endpoint with the same request id and gets
  # the same hold.
  def test_c6_lost_reply_is_retried_without_a_second_hold
    proxy = ReplyDroppingProxy.new(cluster.urls[0])
    c = client([proxy.url, *cluster.urls.drop(1)])
    key = unique("c6-lost-reply")
    lock = c.lock(key, ttl: 10, owner: unique("owner"))
    assert lock.acquire
    assert_equal 1, proxy.dropped
    info = client.lock_info(key)
    assert_equal [lock.owner, lock.token], [info[:owner], info[:token]]
    assert_equal ["acquired"], client.lock_history(key)[:events].map { |e| e[:event] }
    assert_equal 1, leases_of(client, lock.owner).size
    assert lock.release
    refute client.lock_info(key)[:held]
    assert_empty leases_of(client, lock.owner)
  ensure
    proxy&.close
  end

  # C7: two candidates; the first leads; when it resigns the second leads and
  # whereis and observe name it.
  def test_c7_election_handover
    name = unique("c7")
    c1 = client([cluster.urls[0]])
    c2 = client([cluster.urls[1]])
    first = c1.election(name, "10.0.0.1", ttl: 3).campaign
    assert first.leader?
    assert_equal "10.0.0.1", c2.leader(name)[:value]

    second = c2.election(name, "10.0.0.2", ttl: 3)
    leading = Queue.new
    finish = Queue.new
    campaign = Thread.new do
      second.lead do |leader|
        leading << leader.token
        finish.pop
        :done
      end
    end
    wait_until("the second candidate queued") { c1.whereis(name)&.fetch(:queue)&.size == 1 }
    index = c1.whereis(name)[:index]
    observer = Thread.new { c1.observe(name, index: index, timeout: 10) }

    first.resign
    refute first.leader?
    token = leading.pop
    assert_operator token, :>, first.token
    assert second.leader?
    change = observer.value
    assert change[:registered]
    assert_equal [second.owner, "10.0.0.2", token], change.values_at(:owner, :value, :token)
    assert_equal [first.owner, "released"], change[:vacated]&.values_at(:owner, :reason)
    assert_equal "10.0.0.2", c1.whereis(name)[:value]
    assert_equal second.owner, c2.leader(name)[:owner]

    finish << true
    assert_equal :done, campaign.value
    assert_nil c1.whereis(name), "lead resigns when its block ends"
  end

  # C8: bad input is refused with the server's invalid_argument and a message
  # naming the field, raised as InvalidArgumentError.
  def test_c8_bad_input
    c = client
    key = unique("c8")
    cases = {
      "owner" => [-> { c.acquire_lock(key, owner: "", ttl: 5) }, -> { c.lock(key, owner: "").acquire }],
      "ttl_ms" => [-> { c.acquire_lock(key, owner: "x", ttl: 0) }, -> { c.lock(key, ttl: 0).acquire }],
      "key" => [-> { c.acquire_lock("#{key}\u0001", owner: "x", ttl: 5) }, -> { c.lock("#{key}\u0001").acquire }]
    }
    cases.each do |field, calls|
      calls.each do |call|
        error = assert_raises(Leasehold::InvalidArgumentError, field, &call)
        assert_equal ["invalid_argument", 400], [error.code, error.status]
        assert error.message.start_with?("#{field}: "), "#{field}: #{error.message}"
      end
    end
    refute c.lock_info(key)[:held]
  end

  private

  # Record (thread-safely) when each successful call of +methods+ on +client+
  # was made; the calls still go to the cluster.
  def record_successful_sends(client, *methods)
    sends = []
    mutex = Mutex.new
    client.extend(Module.new do
      methods.each do |name|
        define_method(name) do |*args, **options|
          sent = Leasehold::Deadline.now
          super(*args, **options).tap { mutex.synchronize { sends << sent } }
        end
      end
    end)
    sends
  end

  def leases_of(c, owner)
    c.leases(limit: 1000)[:leases].select { |l| l[:owner] == owner }
  end
end
