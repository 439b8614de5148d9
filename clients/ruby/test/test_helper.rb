# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "minitest/autorun"
require "fileutils"
require "json"
require "net/http"
require "securerandom"
require "socket"
require "tmpdir"
require "leasehold"

# The gem's own log lines go to a file (LEASEHOLD_TEST_LOG), not the test output.
Leasehold.logger = Logger.new(ENV.fetch("LEASEHOLD_TEST_LOG", File::NULL), level: Logger::DEBUG)

# Helpers shared by the tests.
module TestSupport
  # Now on the monotonic clock.
  def now
    Leasehold::Deadline.now
  end

  # Poll the block every 20 ms until it returns a truthy value (returned), or fail
  # after +timeout+ seconds with +message+.
  def wait_until(message = "condition", timeout: 10)
    give_up_at = now + timeout
    loop do
      result = yield
      return result if result

      flunk("timed out after #{timeout}s waiting for: #{message}") if now > give_up_at
      sleep 0.02
    end
  end

  # A key unique to this run.
  def unique(name)
    "rb-test/#{name}/#{SecureRandom.hex(4)}"
  end
end

# A leasehold cluster of real `leasehold serve` processes on free loopback ports,
# in-memory. Every cluster started is stopped after the run (also on failure).
class LeaseholdCluster
  # The binary under test: LEASEHOLD_BIN, else target/debug/leasehold of the repository.
  BIN = ENV.fetch("LEASEHOLD_BIN") { File.expand_path("../../../target/debug/leasehold", __dir__) }

  # One node: its id, process id, HTTP URL and log file.
  Node = Struct.new(:id, :pid, :url, :log, :paused, keyword_init: true)

  @started = []
  @started_mutex = Mutex.new

  class << self
    # Every cluster started so far (stopped after the run).
    attr_reader :started

    # A cluster of +size+ nodes, started and with a leader; see {#initialize}.
    def start(size = 3, **options, &args)
      cluster = new(size, **options, &args)
      @started_mutex.synchronize { @started << cluster }
      cluster.start
      cluster
    end

    # The cluster shared by the non-destructive tests, started on first use.
    def shared
      raise @shared_failure if @shared_failure

      @shared ||= start
    rescue StandardError => e
      @shared_failure = e
      raise
    end

    # Stop every cluster started.
    def stop_all
      @started.each(&:stop)
    end

    # +count+ distinct free TCP ports on 127.0.0.1.
    def free_ports(count)
      servers = Array.new(count) { TCPServer.new("127.0.0.1", 0) }
      servers.map { |s| s.addr[1] }
    ensure
      servers&.each(&:close)
    end
  end

  # The nodes, in id order.
  attr_reader :nodes

  # The directory of the cluster's logs and files.
  attr_reader :dir

  # +args+: extra `serve` flags for every node, made by the block (given the
  # cluster's directory) when one is given; +scheme+: "https" for TLS nodes;
  # +token+ and +ca_file+: what the helper's own status checks send.
  def initialize(size, scheme: "http", token: nil, ca_file: nil, &args)
    unless File.executable?(BIN)
      raise "no leasehold binary at #{BIN}: build it (cargo build -p leasehold-node) or set LEASEHOLD_BIN"
    end

    @dir = Dir.mktmpdir("leasehold-ruby-test-")
    @args = args ? args.call(@dir) : []
    @token = token
    @ca_file = ca_file && File.join(@dir, ca_file)
    ports = self.class.free_ports(2 * size)
    @peers = (1..size).map { |id| "#{id}=127.0.0.1:#{ports[size + id - 1]}" }
    @nodes = (1..size).map do |id|
      Node.new(id: id, url: "#{scheme}://127.0.0.1:#{ports[id - 1]}", log: File.join(@dir, "node#{id}.log"),
               paused: false)
    end
  end

  # Start every node and wait for a leader.
  def start
    @nodes.each { |node| spawn(node) }
    wait_for_leader
    self
  end

  # The HTTP URLs of the nodes, in id order.
  def urls
    @nodes.map(&:url)
  end

  # Poll GET /v1/cluster on every live node until they all name the same live
  # leader; its index in {#nodes}.
  def wait_for_leader(timeout: 20)
    give_up_at = Leasehold::Deadline.now + timeout
    loop do
      live = @nodes.select(&:pid)
      leaders = live.map { |node| status(node)&.fetch("leader_id", nil) }
      leader = leaders.first
      if leader && leaders.uniq.size == 1 && live.any? { |n| n.id == leader }
        return @nodes.index { |n| n.id == leader }
      end

      raise "no leader after #{timeout}s: #{leaders.inspect}; logs in #{@dir}" if Leasehold::Deadline.now > give_up_at

      sleep 0.05
    end
  end

  # Index of the current leader (waits for one).
  def leader_index
    wait_for_leader
  end

  # SIGSTOP the nodes at +indexes+ (default all).
  def pause(*indexes)
    select_nodes(indexes).each do |node|
      Process.kill("STOP", node.pid)
      node.paused = true
    end
  end

  # SIGCONT the nodes at +indexes+ (default all).
  def resume(*indexes)
    select_nodes(indexes).each do |node|
      Process.kill("CONT", node.pid)
      node.paused = false
    end
  end

  # SIGKILL the node at +index+ and reap it.
  def kill(index)
    node = @nodes[index]
    Process.kill("KILL", node.pid)
    Process.wait(node.pid)
    node.pid = nil
  end

  # Stop every node (SIGCONT first for paused ones, then SIGKILL); idempotent.
  def stop
    @nodes.each do |node|
      next unless node.pid

      begin
        Process.kill("CONT", node.pid) if node.paused
        Process.kill("KILL", node.pid)
        Process.wait(node.pid)
      rescue Errno::ESRCH, Errno::ECHILD
        nil
      end
      node.pid = nil
    end
    FileUtils.rm_rf(@dir) unless ENV["LEASEHOLD_KEEP_LOGS"]
  end

  private

  def spawn(node)
    port = node.url[/\d+\z/]
    peer = @peers[node.id - 1].split("=").last
    # The node refuses to start with a LEASEHOLD_* variable it does not know
    # (LEASEHOLD_BIN, LEASEHOLD_TEST_LOG ...): pass it none but the log filter.
    env = ENV.keys.grep(/\ALEASEHOLD_/).to_h { |name| [name, nil] }
    env["LEASEHOLD_LOG"] = ENV.fetch("LEASEHOLD_LOG", "warn")
    node.pid = Process.spawn(
      env,
      BIN, "serve", "--node-id", node.id.to_s, "--client-addr", "127.0.0.1:#{port}",
      "--peer-addr", peer, "--cluster-members", @peers.join(","), *@args,
      in: File::NULL, out: node.log, err: [:child, :out]
    )
  end

  def status(node)
    uri = URI("#{node.url}/v1/cluster")
    options = { open_timeout: 0.5, read_timeout: 0.5, use_ssl: uri.scheme == "https", ca_file: @ca_file }
    Net::HTTP.start(uri.host, uri.port, **options) do |http|
      response = http.get(uri.path, @token ? { "Authorization" => "Bearer #{@token}" } : {})
      response.code == "200" ? JSON.parse(response.body) : nil
    end
  rescue SystemCallError, IOError, Net::OpenTimeout, Net::ReadTimeout, OpenSSL::SSL::SSLError
    nil
  end

  def select_nodes(indexes)
    (indexes.empty? ? (0...@nodes.size).to_a : indexes).map { |i| @nodes[i] }.select(&:pid)
  end
end

Minitest.after_run { LeaseholdCluster.stop_all }
at_exit { LeaseholdCluster.stop_all }

# A TCP proxy to one node that forwards each request and throws the reply away
# (closing the connection), as if the reply were lost on the way back.
class ReplyDroppingProxy
  # How many replies it has dropped.
  attr_reader :dropped

  def initialize(upstream)
    @upstream = URI(upstream)
    @server = TCPServer.new("127.0.0.1", 0)
    @dropped = 0
    @thread = Thread.new { loop { serve(@server.accept) } }
  end

  # The URL clients use.
  def url
    "http://127.0.0.1:#{@server.addr[1]}"
  end

  # Stop accepting.
  def close
    @thread.kill
    @server.close
  end

  private

  def serve(socket)
    head = +""
    head << socket.readpartial(4096) until head.include?("\r\n\r\n")
    length = head[/^content-length:\s*(\d+)/i, 1].to_i
    body_so_far = head.split("\r\n\r\n", 2)[1].to_s.bytesize
    head << socket.read(length - body_so_far) if length > body_so_far
    TCPSocket.open(@upstream.host, @upstream.port) do |upstream|
      upstream.write(head.sub(/^connection:.*\r\n/i, "").sub("\r\n", "\r\nConnection: close\r\n"))
      upstream.read # the whole reply: the request was served
    end
    @dropped += 1
  rescue IOError, SystemCallError
    nil
  ensure
    socket.close
  end
end

# A TCP proxy to one node that forwards each request and its reply until {#hang!};
# after that it accepts connections and reads the requests but never answers, as a
# paused node does.
class HangingProxy
  def initialize(upstream)
    @upstream = URI(upstream)
    @server = TCPServer.new("127.0.0.1", 0)
    @hanging = false
    @held = Queue.new
    @thread = Thread.new { loop { Thread.new(@server.accept) { |socket| serve(socket) } } }
  end

  # The URL clients use.
  def url
    "http://127.0.0.1:#{@server.addr[1]}"
  end

  # Answer nothing from now on.
  def hang!
    @hanging = true
  end

  # Stop accepting and drop the connections held open.
  def close
    @thread.kill
    @server.close
    @held.pop.close until @held.empty?
  end

  private

  def serve(socket)
    head = +""
    head << socket.readpartial(4096) until head.include?("\r\n\r\n")
    length = head[/^content-length:\s*(\d+)/i, 1].to_i
    body_so_far = head.split("\r\n\r\n", 2)[1].to_s.bytesize
    head << socket.read(length - body_so_far) if length > body_so_far
    return @held << socket if @hanging # never answered; closed by #close

    TCPSocket.open(@upstream.host, @upstream.port) do |upstream|
      upstream.write(head.sub(/^connection:.*\r\n/i, "").sub("\r\n", "\r\nConnection: close\r\n"))
      socket.write(upstream.read)
    end
    socket.close
  rescue IOError, SystemCallError
    socket.close unless socket.closed?
  end
end
