from points.service import service

service.main()
