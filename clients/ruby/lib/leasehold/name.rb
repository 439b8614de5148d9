# frozen_string_literal: true

module Leasehold
  # A name in the registry, held like a lock and renewed in the background:
  # a registration (locker's global registry) or leadership in an election.
  # Made by {Recipes#register} (registers at once) and {Recipes#election}:
  #
  #   client.election("svc/leader", "10.0.0.7:8080").lead do |leader|
  #     serve_as_leader # LockLost is raised here if leadership is lost
  #   end
  #
  # It has {Lock}'s interface ({#acquire}, {#try_lock}, {#release}, {#held?},
  # {#token}, ...) plus {#campaign}, {#lead}, {#resign}, {#proclaim},
  # {#leader} and {#observe}. Names default to a 10 s TTL.
  class Name < Lock
    # Campaign requests queue for at most this long each (seconds), then queue again.
    CAMPAIGN_WAIT = 60

    # +name+ to hold, +value+ to publish (e.g. this instance's address); the
    # options are {Lock#initialize}'s (except +lock_delay+).
    def initialize(backend, name, value = nil, ttl: 10, **options)
      super(backend, name, ttl: ttl, value: value, **options)
    end

    # Register the name, queueing up to +wait+ seconds for it; raises
    # {NameTakenError} (with the +holder+) if it stays taken.
    def register(wait: @wait)
      acquire(wait: wait)
    end

    # Campaign until elected (FIFO with the other candidates), or until +timeout+
    # seconds pass ({NameTakenError}). Retries while the cluster is unavailable.
    # Returns self, elected.
    #
    # A retry after unavailable/timeout sends the same request id: the server then
    # treats it as the same campaign request (the same place in the queue, or the
    # grant that raced the disconnect), so that grant is not left behind as a
    # ghost holder that this campaign would queue behind for a TTL. A new request
    # id is taken only for a new request: after name_taken (the wait ran out), or
    # when what the retry got back had already ended.
    def campaign(timeout: nil)
      give_up_at = timeout && Deadline.now + timeout
      request_id = new_request_id
      retried = false
      loop do
        remaining = give_up_at ? give_up_at - Deadline.now : CAMPAIGN_WAIT
        begin
          obtain([[remaining, CAMPAIGN_WAIT].min, 0].max, request_id)
          return self
        rescue NameTakenError
          raise if give_up_at && Deadline.now >= give_up_at

          request_id = new_request_id
          retried = false
        rescue LockLost, LeaseNotFoundError => e
          # The retried request's grant or waiting lease ended meanwhile; with a
          # lease of our own (lease_id), that lease is gone: nothing to retry.
          raise unless retried && !@lease_id && !(give_up_at && Deadline.now >= give_up_at)

          logger.info("#{label}: campaign request #{request_id} ended (#{e.message}); campaigning anew")
          request_id = new_request_id
          retried = false
        rescue UnavailableError, TimeoutError => e
          raise if give_up_at && Deadline.now >= give_up_at

          logger.info("#{label}: campaign paused: #{e.message}")
          retried = true
          sleep([ttl / 3.0, 0.5].min)
        end
      end
    end

    # Campaign (see {#campaign}), run the block while leader, then resign; returns
    # the block's value. If leadership is lost first, {LockLost} is raised in the
    # block (unless +on_lost+ was given).
    def lead(timeout: nil, &block)
      campaign(timeout: timeout)
      run_held(&block)
    end

    # Give the name up (unregister; the next candidate in line is elected).
    def resign
      release
    end

    # True while this object holds the name (see {Lock#held?}).
    def leader?
      held?
    end

    # Extend the registration now (see {Lock#refresh}); a name's TTL cannot be
    # changed (+ttl+ must be nil: ArgumentError otherwise).
    def refresh(ttl = nil)
      raise ArgumentError, "a name's TTL cannot be changed while held" if ttl

      super()
    end

    # Publish a new value under the name while holding it; returns the record.
    def proclaim(value)
      record = @backend.proclaim(@key, value, owner: @owner, token: token)
      @value = value
      record
    rescue *Renewer::GONE => e
      raise lost_from(e, "not proclaimed: the name is no longer held")
    end

    # Who holds the name now (a request): its record (+owner+, +value+, +token+,
    # ...) or nil when nobody does.
    def leader
      @backend.whereis(@key)
    end
    alias holder leader

    # Yield the name's state (+registered+, +owner+, +value+, +vacated+ ...) each
    # time it changes, from a blocking query of up to +timeout+ seconds at a time.
    # Runs until the block breaks out.
    def observe(timeout: 30)
      index = 0
      loop do
        state = @backend.observe(@key, index: index, timeout: timeout)
        next if state[:index] <= index

        index = state[:index]
        yield state
      end
    end

    # A short description for logs and errors.
    def label
      "name #{@key.inspect} (owner #{@owner.inspect}#{token && ", token #{token}"})"
    end

    protected

    # Field of {#holder} with the grant time in ms since the epoch.
    def held_since_field
      :registered_at_ms
    end

    # Register (with +wait+: campaign) for the name.
    def send_acquire(ttl, wait, request_id)
      @backend.register_name(@key, owner: @owner, value: @value, wait: wait, request_id: request_id,
                                   **lease_choice(ttl))
    end

    # Keep the name alive; a name's TTL cannot be changed (+ttl+ must be nil).
    def send_extend(hold, ttl: nil, timeout: nil, attempt: nil)
      raise ArgumentError, "a name's TTL cannot be changed while held" if ttl

      @backend.extend_name(@key, owner: @owner, token: hold[:token], timeout: timeout, attempt: attempt)
    end

    # Unregister.
    def send_release(hold, request_id)
      @backend.resign(@key, owner: @owner, token: hold[:token], request_id: request_id)
    end

    # A taken name raises the server's NameTakenError as it is.
    def not_obtained(error)
      error
    end
  end
end
