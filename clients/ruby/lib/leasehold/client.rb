# frozen_string_literal: true

require "json"
require "net/http"
require "openssl"
require "securerandom"
require "uri"

module Leasehold
  # The HTTP client of a leasehold cluster (SPEC §3).
  #
  #   client = Leasehold::Client.new(endpoints: %w[http://10.0.0.1:7001 http://10.0.0.2:7001])
  #   client.lock("jobs/sitemap", ttl: 30, wait: 10).with_lock { |lock| ... }
  #
  # It takes several endpoints and fails over between them: a call goes to the
  # endpoint that answered last; on a refused, reset or timed-out connection, or
  # a 503 +unavailable+, it tries the next one, twice round the list at most and
  # within +timeout+ seconds (plus the call's own wait for blocking calls). Each
  # try at one endpoint is bounded by +attempt_timeout+ (a paused node accepts
  # connections but never answers), or by a call's shorter +attempt+ (renewals
  # use half their heartbeat). Every mutating call carries a +request_id+,
  # the same on each retry of that call, so a retry never acts twice.
  #
  # The methods below map one to one onto the HTTP API. Durations are seconds;
  # results are the server's JSON objects as Hashes with Symbol keys (its
  # durations stay in ms, e.g. +:ttl_ms+). Errors raise {Leasehold::Error}
  # subclasses. A Client is safe to share between threads (each request opens
  # its own connection).
  class Client
    include Recipes

    # Default bound of a whole call, across endpoints (seconds).
    DEFAULT_TIMEOUT = 5
    # Default bound of one try at one endpoint before the next is tried (seconds).
    DEFAULT_ATTEMPT_TIMEOUT = 2

    # What a failed connection raises: try the next endpoint.
    TRANSPORT_ERRORS = [
      SystemCallError, IOError, SocketError, Net::OpenTimeout, Net::ReadTimeout,
      Net::WriteTimeout, OpenSSL::SSL::SSLError, Net::HTTPBadResponse
    ].freeze

    # The endpoint URLs, in order.
    attr_reader :endpoints

    # +endpoints+: URLs (+http://host:port+ or +https://host:port+); +token+: bearer
    # token for a cluster with auth; +ca_file+: PEM CA to trust for https;
    # +timeout+: seconds a call may take across endpoints (a blocking call gets its
    # wait on top); +attempt_timeout+: seconds for one try at one endpoint
    # (default: the smaller of 2 and +timeout+); +logger+: default {Leasehold.logger}.
    def initialize(endpoints:, token: nil, ca_file: nil, timeout: DEFAULT_TIMEOUT, attempt_timeout: nil, logger: nil)
      @endpoints = Array(endpoints).map { |e| e.to_s.strip.chomp("/") }.reject(&:empty?)
      raise ArgumentError, "give at least one endpoint URL" if @endpoints.empty?

      @endpoints.each do |e|
        raise ArgumentError, "endpoint #{e.inspect} must start with http:// or https://" unless e.match?(%r{\Ahttps?://})
      end
      @token = token&.strip
      @ca_file = ca_file
      @timeout = timeout
      @attempt_timeout = attempt_timeout || [DEFAULT_ATTEMPT_TIMEOUT, timeout].min
      @logger = logger
      @current = 0
    end

    # A client configured like the CLI: endpoints from LEASEHOLD_ENDPOINTS
    # (comma-separated), token from LEASEHOLD_AUTH_TOKEN, CA from LEASEHOLD_CACERT;
    # +options+ override them.
    def self.from_env(**options)
      env = ->(name) { ENV[name].to_s.strip.empty? ? nil : ENV[name] }
      new(endpoints: (env["LEASEHOLD_ENDPOINTS"] || "http://127.0.0.1:7070").split(","),
          token: env["LEASEHOLD_AUTH_TOKEN"], ca_file: env["LEASEHOLD_CACERT"], **options)
    end

    # The logger of this client (its own, else the global {Leasehold.logger}).
    def logger
      @logger || Leasehold.logger
    end

    # The endpoint that answered last (where the next call goes first).
    def current_endpoint
      @endpoints[@current]
    end

    # Human-readable form (never shows the token).
    def inspect
      "#<#{self.class.name} endpoints=#{@endpoints.inspect}#{@token ? ' token=<redacted>' : ''}>"
    end

    # A fresh idempotency key for a mutating call.
    def new_request_id
      "rb-#{SecureRandom.uuid}"
    end

    # ----- leases -----

    # Create a lease of +ttl+ seconds (a session for many holds).
    # => +{lease_id:, ttl_ms:, owner:}+
    def grant(ttl:, owner: nil, request_id: nil)
      post("/v1/leases", { ttl_ms: Deadline.ms(ttl), owner: owner, request_id: request_id || new_request_id })
    end

    # Keep a lease alive (its TTL restarts). => +{lease_id:, ttl_ms:}+;
    # {LeaseNotFoundError} once it has expired.
    def keepalive(lease_id, timeout: nil)
      call(:post, "/v1/leases/#{Integer(lease_id)}/keepalive", body: {}, timeout: timeout)
    end

    # Revoke a lease: everything under it is released (and passes to waiters).
    # => +{revoked: true, released: [keys]}+
    def revoke(lease_id, request_id: nil)
      call(:delete, "/v1/leases/#{Integer(lease_id)}", query: { request_id: request_id || new_request_id })
    end

    # A lease: +{lease_id:, ttl_ms:, owner:, remaining_ms:, locks:, names:, semaphores:}+.
    def lease(lease_id)
      call(:get, "/v1/leases/#{Integer(lease_id)}")
    end

    # A page of leases: +{leases: [...], next_after:}+.
    def leases(limit: nil, after: nil)
      call(:get, "/v1/leases", query: { limit: limit, after: after })
    end

    # ----- locks -----

    # Acquire +key+ under a new lease of +ttl+ seconds or the existing +lease_id+,
    # queueing FIFO for up to +wait+ seconds (0 or nil: try once). => the holder
    # record (+key:, owner:, token:, lease_id:, ttl_ms:, locked_at_ms:,
    # acquisitions:, value:+); {LockHeldError} with +holder+ when held.
    def acquire_lock(key, owner:, ttl: nil, lease_id: nil, wait: nil, value: nil, lock_delay: nil, request_id: nil)
      post("/v1/locks/#{seg('key', key)}",
           { owner: owner, ttl_ms: ttl && Deadline.ms(ttl), lease_id: lease_id, wait_ms: wait_ms(wait),
             value: value, lock_delay_ms: lock_delay && Deadline.ms(lock_delay),
             request_id: request_id || new_request_id }, wait: wait)
    end

    # Keep a held lock's lease alive; with +ttl+ give the lease that TTL.
    # +timeout+ bounds this call, +attempt+ (when shorter than +attempt_timeout+)
    # each try at one endpoint. => +{token:, ttl_ms:}+; {NotOwnerError} if lost.
    def extend_lock(key, owner:, token:, ttl: nil, request_id: nil, timeout: nil, attempt: nil)
      post("/v1/locks/#{seg('key', key)}/extend",
           { owner: owner, token: token, ttl_ms: ttl && Deadline.ms(ttl), request_id: request_id || new_request_id },
           timeout: timeout, attempt: attempt)
    end

    # Release a held lock. => +{released: true}+; {NotOwnerError} if not held.
    def release_lock(key, owner:, token:, request_id: nil)
      call(:delete, "/v1/locks/#{seg('key', key)}",
           query: { owner: owner, token: token, request_id: request_id || new_request_id })
    end

    # An operator's force release of a lock (+kind+ :lock), semaphore slot
    # (:semaphore, with +token+) or name (:name), whoever holds it.
    # => +{released: true, owner:, token:}+
    def force_release(key, token: nil, kind: :lock, request_id: nil)
      call(:delete, "#{collection(kind)}/#{seg('key', key)}",
           query: { force: true, token: token, request_id: request_id || new_request_id })
    end

    # A lock's state: +{key:, held:, owner:, token:, ..., waiters:, queue:, index:}+.
    # With +index+ and +wait+ a blocking query: returns once the key's index
    # exceeds +index+ or +wait+ seconds pass. +stale+: read this node's replica.
    def lock_info(key, index: nil, wait: nil, stale: false)
      call(:get, "/v1/locks/#{seg('key', key)}",
           query: { index: index, wait_ms: wait_ms(wait), stale: stale || nil }, wait: wait)
    end

    # Held locks in key order: +{locks: [...], next_after:}+.
    def locks(prefix: nil, limit: nil, after: nil)
      call(:get, "/v1/locks", query: { prefix: prefix, limit: limit, after: after })
    end

    # A lock's recent events, newest first: +{key:, events: [...]}+.
    def lock_history(key)
      call(:get, "/v1/locks/#{seg('key', key)}/history")
    end

    # Wait up to +timeout+ seconds for +key+ to be free (or, with +token+, for that
    # hold to end). => +{released: true, reason:, owner:, token:, at_ms:}+, or
    # +{released: false, holder: {...}}+ when the time ran out.
    def wait_for_release(key, timeout:, token: nil)
      call(:get, "/v1/locks/#{seg('key', key)}/wait", query: { wait_ms: Deadline.ms(timeout), token: token },
                                                       wait: timeout)
    end

    # The most recent expirations, newest first: an Array of
    # +{kind:, key:, owner:, token:, expired_at_ms:}+ (NoBrainer's Lock.expired).
    def expired(limit: nil)
      call(:get, "/v1/expired", query: { limit: limit }).fetch(:expired)
    end

    # ----- semaphores -----

    # Acquire a slot of the semaphore +key+ that admits +limit+ holders.
    # => +{key:, owner:, token:, lease_id:, ttl_ms:, limit:, holders:}+;
    # {SemaphoreFullError} when full, {LimitMismatchError} for another limit.
    def acquire_semaphore(key, limit:, owner:, ttl: nil, lease_id: nil, wait: nil, value: nil, request_id: nil)
      post("/v1/semaphores/#{seg('key', key)}",
           { owner: owner, limit: limit, ttl_ms: ttl && Deadline.ms(ttl), lease_id: lease_id,
             wait_ms: wait_ms(wait), value: value, request_id: request_id || new_request_id }, wait: wait)
    end

    # Keep a slot alive (see {#extend_lock}).
    def extend_semaphore(key, owner:, token:, ttl: nil, request_id: nil, timeout: nil, attempt: nil)
      post("/v1/semaphores/#{seg('key', key)}/extend",
           { owner: owner, token: token, ttl_ms: ttl && Deadline.ms(ttl), request_id: request_id || new_request_id },
           timeout: timeout, attempt: attempt)
    end

    # Release a slot. => +{released: true}+
    def release_semaphore(key, owner:, token:, request_id: nil)
      call(:delete, "/v1/semaphores/#{seg('key', key)}",
           query: { owner: owner, token: token, request_id: request_id || new_request_id })
    end

    # A semaphore's holders and queue: +{key:, limit:, holders: [...], waiters:, queue:, index:}+.
    def semaphore_info(key, index: nil, wait: nil, stale: false)
      call(:get, "/v1/semaphores/#{seg('key', key)}",
           query: { index: index, wait_ms: wait_ms(wait), stale: stale || nil }, wait: wait)
    end

    # Held semaphores in key order: +{semaphores: [...], next_after:}+.
    def semaphores(prefix: nil, limit: nil, after: nil)
      call(:get, "/v1/semaphores", query: { prefix: prefix, limit: limit, after: after })
    end

    # ----- names -----

    # Register +name+ (with +wait+: campaign, queued FIFO). => +{name:, owner:,
    # value:, token:, lease_id:, registered_at_ms:, expires_in_ms:}+;
    # {NameTakenError} with +holder+ when taken.
    def register_name(name, owner:, value: nil, ttl: nil, lease_id: nil, wait: nil, request_id: nil)
      call(:put, "/v1/names/#{seg('name', name)}",
           body: { owner: owner, value: value, ttl_ms: ttl && Deadline.ms(ttl), lease_id: lease_id,
                   wait_ms: wait_ms(wait), request_id: request_id || new_request_id }, wait: wait)
    end

    # Keep a registered name alive (+timeout+, +attempt+: see {#extend_lock}).
    # => +{token:, ttl_ms:}+
    def extend_name(name, owner:, token:, request_id: nil, timeout: nil, attempt: nil)
      post("/v1/names/#{seg('name', name)}/extend",
           { owner: owner, token: token, request_id: request_id || new_request_id }, timeout: timeout,
                                                                                      attempt: attempt)
    end

    # Publish a new value under a held name. => the name's record.
    def proclaim(name, value, owner:, token:, request_id: nil)
      call(:patch, "/v1/names/#{seg('name', name)}",
           body: { owner: owner, token: token, value: value, request_id: request_id || new_request_id })
    end

    # Unregister a held name (resign leadership). => +{released: true}+
    def resign(name, owner:, token:, request_id: nil)
      call(:delete, "/v1/names/#{seg('name', name)}",
           query: { owner: owner, token: token, request_id: request_id || new_request_id })
    end

    # Who holds +name+: its record (+owner:, value:, token:, ...+) or nil.
    # +stale+: read this node's replica (locker's dirty read).
    def whereis(name, stale: false)
      state = call(:get, "/v1/names/#{seg('name', name)}", query: { stale: stale || nil })
      state[:registered] ? state : nil
    rescue NameNotFoundError
      nil
    end

    # A blocking query on +name+: returns its state (+registered:+, the record,
    # +vacated:+, +queue:+, +index:+) once its index exceeds +index+, or after
    # +timeout+ seconds.
    def observe(name, index: 0, timeout: 30)
      call(:get, "/v1/names/#{seg('name', name)}", query: { index: index, wait_ms: Deadline.ms(timeout) },
                                                   wait: timeout)
    end

    # Registered names in order: +{names: [...], next_after:}+.
    def names(prefix: nil, limit: nil, after: nil)
      call(:get, "/v1/names", query: { prefix: prefix, limit: limit, after: after })
    end

    # ----- cluster -----

    # The cluster as the answering node sees it: +{node_id:, leader_id:, term:,
    # commit_index:, applied_index:, members: [...]}+.
    def cluster
      call(:get, "/v1/cluster")
    end

    private

    def post(path, body, wait: nil, timeout: nil, attempt: nil)
      call(:post, path, body: body, wait: wait, timeout: timeout, attempt: attempt)
    end

    # One call with failover; the parsed 2xx body, or raises. +timeout+ bounds
    # the whole call (default the client's), +attempt+ one try at one endpoint
    # (at most the client's +attempt_timeout+); +wait+ is added to both.
    def call(method, path, query: nil, body: nil, wait: nil, timeout: nil, attempt: nil)
      wait = wait.to_f
      per_try = (attempt ? [attempt, @attempt_timeout].min : @attempt_timeout) + wait
      budget = (timeout || @timeout) + wait
      give_up_at = Deadline.now + budget
      target = path + query_string(query)
      payload = body && JSON.generate(body.compact)
      start = @current
      n = @endpoints.size
      last_error = nil
      (2 * n).times do |attempt|
        remaining = give_up_at - Deadline.now
        break if remaining <= 0

        i = (start + attempt) % n
        endpoint = @endpoints[i]
        begin
          status, reply, retry_after = perform(endpoint, method, target, payload, [per_try, remaining].min)
        rescue *TRANSPORT_ERRORS => e
          last_error = transport_error(endpoint, e)
          logger.info("#{method.upcase} #{target}: #{last_error.message}; trying the next endpoint")
          next
        end
        if (200..299).cover?(status)
          @current = i
          return reply
        end
        error = Error.from_reply(status, reply)
        error.details[:retry_after_ms] ||= retry_after * 1000 if retry_after
        unless status == 503 # any other answer is the cluster's
          @current = i
          raise error
        end

        last_error = error
        logger.info("#{method.upcase} #{target}: #{endpoint} is unavailable (#{error.message}); trying the next endpoint")
        # Every endpoint said so once: pause before going round again.
        sleep([[0.1, give_up_at - Deadline.now].min, 0].max) if attempt + 1 >= n
      end
      raise last_error || TimeoutError.new("#{method.upcase} #{target}: no endpoint answered within #{budget.round(3)}s")
    end

    # One HTTP exchange: [status, parsed body, Retry-After seconds or nil].
    def perform(endpoint, method, target, payload, timeout)
      uri = URI(endpoint + target)
      http = Net::HTTP.new(uri.host, uri.port)
      http.open_timeout = http.read_timeout = http.write_timeout = timeout
      http.max_retries = 0 # retries are ours: on the next endpoint, with the same request_id
      if uri.scheme == "https"
        http.use_ssl = true
        http.verify_mode = OpenSSL::SSL::VERIFY_PEER
        http.ca_file = @ca_file if @ca_file
      end
      request = Net::HTTPGenericRequest.new(method.to_s.upcase, !payload.nil?, true, uri.request_uri, headers(payload))
      request.body = payload if payload
      started = Deadline.now
      response = http.start { |conn| conn.request(request) }
      logger.debug { "#{method.upcase} #{endpoint}#{target} -> #{response.code} in #{((Deadline.now - started) * 1000).round} ms" }
      [response.code.to_i, parse(response), response["Retry-After"]&.to_i]
    end

    def headers(payload)
      # One connection per request: closed by the server after its reply.
      h = { "Accept" => "application/json", "Connection" => "close", "User-Agent" => "leasehold-ruby/#{VERSION}" }
      h["Content-Type"] = "application/json" if payload
      h["Authorization"] = "Bearer #{@token}" if @token
      h
    end

    def parse(response)
      body = response.body.to_s
      return {} if body.empty?

      JSON.parse(body, symbolize_names: true)
    rescue JSON::ParserError
      raise InternalError, "unexpected reply (HTTP #{response.code}): #{body[0, 200]}" if response.code.start_with?("2")

      body
    end

    def transport_error(endpoint, error)
      if error.is_a?(Net::OpenTimeout) || error.is_a?(Net::ReadTimeout) || error.is_a?(Net::WriteTimeout)
        TimeoutError.new("#{endpoint}: no answer before the deadline (#{error.class})")
      else
        UnavailableError.new("#{endpoint}: cannot reach the node (#{error.class}: #{error.message})")
      end
    end

    def query_string(query)
      pairs = (query || {}).compact
      pairs.empty? ? "" : "?#{URI.encode_www_form(pairs)}"
    end

    def wait_ms(wait)
      wait && wait.positive? ? Deadline.ms(wait) : nil
    end

    def collection(kind)
      { lock: "/v1/locks", semaphore: "/v1/semaphores", name: "/v1/names" }.fetch(kind)
    end

    # A key's path segment: percent-encoded, keeping "/" (allowed in keys) and ":".
    def seg(field, key)
      key = key.to_s
      raise InvalidArgumentError, "#{field}: must not be empty" if key.empty?

      key.b.gsub(%r{[^A-Za-z0-9\-_.~/:]}) { |c| format("%%%02X", c.ord) }
    end
  end
end
