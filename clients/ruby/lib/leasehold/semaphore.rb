# frozen_string_literal: true

module Leasehold
  # One slot of a counting semaphore: up to +limit+ holders at once, each with its
  # own fencing token, queued FIFO (Consul's +lock -n+, Curator's semaphore). The
  # same interface as {Lock}; made by {Recipes#semaphore}. A full semaphore makes
  # {#acquire} raise {SemaphoreFullError} and {#try_lock} return false.
  class Semaphore < Lock
    # How many holders the semaphore admits; every holder must use the same.
    attr_reader :limit

    # +limit+: how many may hold it at once; the options are {Lock#initialize}'s
    # (except +lock_delay+).
    def initialize(backend, key, limit, **options)
      super(backend, key, **options)
      @limit = limit
    end

    # Every current holder of the semaphore (a request): an Array of holder records.
    def holders
      @backend.semaphore_info(@key).fetch(:holders)
    end

    # This object's slot as the cluster sees it (a request), or else the oldest
    # holder's; nil when nobody holds a slot.
    def holder
      all = holders
      all.find { |h| h[:token] == token } || all.first
    end

    # A short description for logs and errors.
    def label
      "semaphore #{@key.inspect} (owner #{@owner.inspect}#{token && ", token #{token}"})"
    end

    protected

    # Acquire a slot.
    def send_acquire(ttl, wait, request_id)
      @backend.acquire_semaphore(@key, limit: @limit, owner: @owner, value: @value, wait: wait,
                                       request_id: request_id, **lease_choice(ttl))
    end

    # Renew the slot.
    def send_extend(hold, ttl: nil, timeout: nil, attempt: nil)
      @backend.extend_semaphore(@key, owner: @owner, token: hold[:token], ttl: ttl, timeout: timeout,
                                      attempt: attempt)
    end

    # Release the slot.
    def send_release(hold, request_id)
      @backend.release_semaphore(@key, owner: @owner, token: hold[:token], request_id: request_id)
    end

    # A full semaphore raises the server's SemaphoreFullError as it is.
    def not_obtained(error)
      error
    end
  end
end
